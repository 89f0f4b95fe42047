"""Threshold and forecast alerts: raised once per budget, threshold and period, delivered by email and
a signed webhook, retried when the receiver fails, and acknowledged in the dashboard and admin."""

import asyncio
import hashlib
import hmac
import time
from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.core import mail
from django.utils import timezone

from budgets import alerts as budget_alerts
from budgets import services
from budgets.models import Alert, AlertDelivery, Budget
from metering import pricing
from metering.services import UsageDraft, record_usage
from tests.budgets.conftest import wait_for, worst_case

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "ring the bell"}]


def verify_tollgate_signature(secret: str, headers: dict, body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's recipe, exactly as docs/operations.md gives it (standard library only)."""
    timestamp = headers["x-tollgate-timestamp"]
    signature = headers["x-tollgate-signature"]
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def _alerting_org(tenant, receiver):
    tenant.manager.email = "manager@acme.example"
    tenant.manager.save()
    tenant.org.alert_webhook_url = receiver.url
    tenant.org.save()
    tenant.org.refresh_from_db()
    assert tenant.org.alert_webhook_secret.startswith("whsec_")  # generated when the URL was set
    return tenant.org


async def _fire(base_url, key, n, max_tokens=2):
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    try:
        return await asyncio.gather(*(client.chat.completions.create(
            model="tollgate-mini", messages=MESSAGES, max_tokens=max_tokens, temperature=0) for _ in range(n)))
    finally:
        await client.close()


def test_each_threshold_alert_fires_exactly_once_under_concurrent_crossings(
        live_gateway, openai_client, tenant, webhook_receiver):
    org = _alerting_org(tenant, webhook_receiver)
    first = openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=2,
                                                  temperature=0)
    per_request = worst_case(pricing.catalog_entry("tollgate-mini", timezone.now()), first.usage.prompt_tokens, 2)
    # Notify only: all 40 are served and the spend runs through 50%, 80% and 100% of a budget of ~20 requests.
    budget = Budget.objects.create(organization=org, amount=20 * per_request, action=Budget.Action.NOTIFY,
                                   thresholds="50,80,100")

    asyncio.run(_fire(live_gateway.v1, tenant.plaintext, 40))

    alerts = Alert.objects.filter(budget=budget, kind=Alert.Kind.THRESHOLD)
    assert sorted(alerts.values_list("threshold_percent", flat=True)) == [50, 80, 100]
    wait_for(lambda: not AlertDelivery.objects.filter(status=AlertDelivery.Status.PENDING).exists())
    assert AlertDelivery.objects.filter(alert__in=alerts, status=AlertDelivery.Status.SENT).count() == 6
    # (The spend rate also raised at most one "forecast to exceed" alert on the way.)
    assert Alert.objects.filter(budget=budget, kind=Alert.Kind.FORECAST).count() <= 1
    threshold_mails = [m for m in mail.outbox if "reached" in m.subject]
    assert len(threshold_mails) == 3
    assert all(m.to == ["manager@acme.example"] for m in mail.outbox)
    payloads = [p for p in webhook_receiver.payloads() if p["type"] == "budget.threshold_crossed"]
    assert sorted(p["threshold_percent"] for p in payloads) == [50, 80, 100]
    assert all(p["organization"] == "acme" and p["budget"]["id"] == budget.pk for p in payloads)
    for headers, body in webhook_receiver.requests:
        assert verify_tollgate_signature(org.alert_webhook_secret, headers, body)
    # Each alert records the spend at the moment it crossed its line.
    for alert in alerts:
        assert alert.spent >= alert.amount * alert.threshold_percent / 100


def test_webhook_signature_verifies_only_with_the_org_secret_and_untouched_body(tenant, webhook_receiver):
    org = _alerting_org(tenant, webhook_receiver)
    budget = Budget.objects.create(organization=org, amount=Decimal("10"))
    now = timezone.now()
    budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 80, now - timedelta(days=1), now + timedelta(days=1),
                              spent=Decimal("8.5"))
    wait_for(lambda: webhook_receiver.requests)
    headers, body = webhook_receiver.requests[0]
    assert verify_tollgate_signature(org.alert_webhook_secret, headers, body)
    assert not verify_tollgate_signature("whsec_not-the-secret", headers, body)
    assert not verify_tollgate_signature(org.alert_webhook_secret, headers, body.replace(b"8.5", b"0.5"))
    stale = dict(headers, **{"x-tollgate-timestamp": str(int(headers["x-tollgate-timestamp"]) - 3600)})
    assert not verify_tollgate_signature(org.alert_webhook_secret, stale, body)
    assert headers["x-tollgate-event"] == f"alert_{Alert.objects.get().pk}"


def test_a_failing_webhook_receiver_is_retried_then_recorded_as_failed(tenant, webhook_receiver, settings):
    settings.TOLLGATE_ALERT_MAX_RETRIES = 2
    settings.TOLLGATE_ALERT_RETRY_BACKOFF_S = 0.05
    webhook_receiver.status = 500
    org = _alerting_org(tenant, webhook_receiver)
    budget = Budget.objects.create(organization=org, amount=Decimal("10"))
    now = timezone.now()
    alert = budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 50, now - timedelta(days=1),
                                      now + timedelta(days=1), spent=Decimal("5"))

    webhook = wait_for(lambda: AlertDelivery.objects.filter(
        alert=alert, channel=AlertDelivery.Channel.WEBHOOK, status=AlertDelivery.Status.FAILED).first())
    assert webhook.attempts == 3  # the first try and two retries
    assert "HTTP 500" in webhook.last_error
    assert len(webhook_receiver.requests) == 3
    # Same event, each try freshly signed.
    assert {h["x-tollgate-event"] for h, _ in webhook_receiver.requests} == {f"alert_{alert.pk}"}
    email = wait_for(lambda: AlertDelivery.objects.filter(alert=alert, channel=AlertDelivery.Channel.EMAIL)
                     .exclude(status=AlertDelivery.Status.PENDING).first())
    assert email.status == AlertDelivery.Status.SENT  # one failing channel does not hold up the other


def test_an_alert_is_raised_once_per_threshold_and_period_even_when_asked_twice(tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("10"))
    now = timezone.now()
    window = (now - timedelta(days=1), now + timedelta(days=1))
    assert budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 80, *window, spent=Decimal("8")) is not None
    assert budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 80, *window, spent=Decimal("9")) is None
    next_window = (window[1], window[1] + timedelta(days=1))
    assert budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 80, *next_window, spent=Decimal("8")) is not None
    assert Alert.objects.count() == 2


def _spend(tenant, amount: Decimal, at):
    record_usage(UsageDraft(request_id=f"hist-{at.timestamp()}", org_id=tenant.org.pk, created_at=at,
                            model_requested="tollgate-mini", model_served="tollgate-mini",
                            feature=tenant.key.default_feature.slug, api_key_id=tenant.key.pk,
                            cost_input=amount))


def test_forecast_to_exceed_alert_comes_before_the_budget_is_spent(tenant):
    now = timezone.now()
    # A two-day range, half gone; $1 spent in the last 10 minutes projects far past $10 by its end.
    fast = Budget.objects.create(organization=tenant.org, amount=Decimal("10"), period=Budget.Period.FIXED,
                                 starts_at=now - timedelta(days=1), ends_at=now + timedelta(days=1),
                                 action=Budget.Action.NOTIFY)
    roomy = Budget.objects.create(organization=tenant.org, amount=Decimal("1000"), period=Budget.Period.FIXED,
                                  starts_at=now - timedelta(days=1), ends_at=now + timedelta(days=1))
    _spend(tenant, Decimal("1.00"), now - timedelta(minutes=10))

    alert = services.check_forecast(fast, at=now)
    assert alert is not None and alert.kind == Alert.Kind.FORECAST
    assert alert.spent == Decimal("1.00") < alert.amount  # before it happens
    # $1 per hour (over the last hour) for the 24 hours left: about $25.
    assert Decimal("24") < alert.forecast < Decimal("26")
    assert services.check_forecast(roomy, at=now) is None
    assert services.check_forecast(fast, at=now) is None  # not twice in one period
    assert Alert.objects.filter(kind=Alert.Kind.FORECAST).count() == 1


def test_managers_see_alerts_on_the_dashboard_and_can_acknowledge_them(client, tenant, clickhouse):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("10"))
    now = timezone.now()
    alert = budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 80, now - timedelta(days=1),
                                      now + timedelta(days=1), spent=Decimal("8"))
    client.force_login(tenant.manager)
    html = client.get(f"/dashboards/{tenant.org.slug}/").content.decode()
    assert 'data-testid="alerts"' in html and "80% of $10 reached" in html

    response = client.post(f"/budgets/{tenant.org.slug}/alerts/{alert.pk}/acknowledge/")
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.acknowledged_at is not None and alert.acknowledged_by == tenant.manager
    assert "acknowledged by acme-manager" in client.get(f"/dashboards/{tenant.org.slug}/").content.decode()


def test_a_manager_cannot_acknowledge_another_orgs_alert(client, make_tenant, catalog):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    budget = Budget.objects.create(organization=globex.org, amount=Decimal("10"))
    now = timezone.now()
    alert = budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 50, now, now + timedelta(days=1),
                                      spent=Decimal("5"))
    client.force_login(acme.manager)
    assert client.post(f"/budgets/{globex.org.slug}/alerts/{alert.pk}/acknowledge/").status_code == 404
    assert client.post(f"/budgets/{acme.org.slug}/alerts/{alert.pk}/acknowledge/").status_code == 404
    alert.refresh_from_db()
    assert alert.acknowledged_at is None
