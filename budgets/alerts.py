"""Raising budget alerts (exactly once per budget, kind, threshold and window) and delivering them.

Delivery is a Celery task per channel (email, webhook) with retries. Without a
broker (the embedded default) the task runs in a background thread of this
process, so a slow receiver never holds up the request that crossed the line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import datetime
from decimal import Decimal

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import close_old_connections, transaction
from django.dispatch import Signal
from django.utils import timezone

from core.money import format_decimal, format_usd
from tenants.models import Membership

from .models import Alert, AlertDelivery, Budget

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tollgate-Signature"
TIMESTAMP_HEADER = "X-Tollgate-Timestamp"
EVENT_HEADER = "X-Tollgate-Event"

# Sent when the transaction that raised an alert commits, with `alert` and `delivery_ids` (one pending
# delivery per channel). budgets.signals hands them to the Celery task (budgets.tasks.deliver_alert).
alert_raised = Signal()


def raise_alert(budget: Budget | int, kind: str, threshold_percent: int, window_start: datetime,
                window_end: datetime, *, spent: Decimal, amount: Decimal | None = None,
                forecast: Decimal | None = None) -> Alert | None:
    """Create the alert unless it exists; a new alert gets one pending delivery per channel.

    Returns the new alert, or None when this budget, kind, threshold and
    window already had one (the unique constraint decides under concurrency).
    """
    budget_id = budget if isinstance(budget, int) else budget.pk
    if amount is None:
        amount = budget.amount if isinstance(budget, Budget) else Budget.objects.get(pk=budget_id).amount
    alert, created = Alert.objects.get_or_create(
        budget_id=budget_id, kind=kind, threshold_percent=threshold_percent, window_start=window_start,
        defaults={"window_end": window_end, "amount": amount, "spent": spent, "forecast": forecast},
    )
    if not created:
        return None
    deliveries = AlertDelivery.objects.bulk_create(
        [AlertDelivery(alert=alert, channel=channel) for channel in AlertDelivery.Channel.values]
    )
    logger.info("budget alert raised: %s", alert.headline)
    delivery_ids = [d.pk for d in deliveries] if all(d.pk for d in deliveries) else list(
        AlertDelivery.objects.filter(alert=alert).values_list("pk", flat=True))
    transaction.on_commit(lambda: alert_raised.send(sender=Alert, alert=alert, delivery_ids=delivery_ids))
    return alert


def acknowledge_alerts(alert_ids, user) -> int:
    return Alert.objects.filter(pk__in=list(alert_ids), acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=user)


# --- delivery ---------------------------------------------------------------


def alert_payload(alert: Alert) -> dict:
    budget = alert.budget
    return {
        "id": f"alert_{alert.pk}",
        "type": "budget.forecast_to_exceed" if alert.kind == Alert.Kind.FORECAST else "budget.threshold_crossed",
        "created_at": alert.created_at.isoformat(),
        "organization": budget.organization.slug,
        "budget": {
            "id": budget.pk,
            "scope": budget.scope_label,
            "scope_kind": budget.scope_kind,
            "period": budget.period,
            "action": budget.action,
            "amount": format_decimal(alert.amount),
        },
        "threshold_percent": alert.threshold_percent,
        "spent": format_decimal(alert.spent),
        "forecast": None if alert.forecast is None else format_decimal(alert.forecast),
        "window_start": alert.window_start.isoformat(),
        "window_end": alert.window_end.isoformat(),
        "message": f"{budget.scope_label}: {alert.headline}",
    }


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 of "<timestamp>." + body, keyed by the org's secret (docs/operations.md)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def email_recipients(alert: Alert) -> list[str]:
    org = alert.budget.organization
    managers = Membership.objects.filter(organization=org, role=Membership.Role.MANAGER).exclude(user__email="")
    addresses = [m.user.email for m in managers.select_related("user")]
    addresses += [a.strip() for a in org.alert_emails.split(",") if a.strip()]
    return sorted(set(addresses))


def _send_email(alert: Alert) -> bool:
    recipients = email_recipients(alert)
    if not recipients:
        return False
    payload = alert_payload(alert)
    body = "\n".join([
        payload["message"],
        "",
        f"Spent this period: {format_usd(alert.spent)} of {format_usd(alert.amount)}",
        *([f"Projected at period end: {format_usd(alert.forecast)}"] if alert.forecast is not None else []),
        f"Period: {alert.window_start:%Y-%m-%d %H:%M} to {alert.window_end:%Y-%m-%d %H:%M} UTC",
        f"Action when the budget is used up: {alert.budget.get_action_display()}",
    ])
    send_mail(f"[Tollgate] {payload['message']}", body, settings.DEFAULT_FROM_EMAIL, recipients)
    return True


def _post_webhook(alert: Alert) -> bool:
    org = alert.budget.organization
    if not org.alert_webhook_url:
        return False
    body = json.dumps(alert_payload(alert), separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Tollgate-Alerts/1",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign_webhook(org.alert_webhook_secret, timestamp, body),
        EVENT_HEADER: f"alert_{alert.pk}",
    }
    response = httpx.post(org.alert_webhook_url, content=body, headers=headers,
                          timeout=settings.TOLLGATE_ALERT_WEBHOOK_TIMEOUT_S)
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"webhook answered HTTP {response.status_code}")
    return True


def attempt_delivery(delivery_id: int) -> str | None:
    """One try at one channel. Returns None when done (sent or nothing to send), else the error."""
    close_old_connections()
    delivery = AlertDelivery.objects.select_related("alert__budget__organization").get(pk=delivery_id)
    if delivery.status in (AlertDelivery.Status.SENT, AlertDelivery.Status.SKIPPED):
        return None
    send = _send_email if delivery.channel == AlertDelivery.Channel.EMAIL else _post_webhook
    attempts = delivery.attempts + 1
    try:
        sent = send(delivery.alert)
    except Exception as exc:  # any failure of the receiver or the mail server is retried
        error = f"{type(exc).__name__}: {exc}"[:2000]
        AlertDelivery.objects.filter(pk=delivery_id).update(attempts=attempts, last_error=error)
        logger.warning("budget alert %s delivery by %s failed (attempt %s): %s",
                       delivery.alert_id, delivery.channel, attempts, error)
        return error
    status = AlertDelivery.Status.SENT if sent else AlertDelivery.Status.SKIPPED
    AlertDelivery.objects.filter(pk=delivery_id).update(attempts=attempts, status=status,
                                                        delivered_at=timezone.now() if sent else None)
    return None


def deliver_with_retries_in_process(delivery_id: int) -> None:
    """The task's retry schedule, run in this thread (no broker)."""
    for retry in range(settings.TOLLGATE_ALERT_MAX_RETRIES + 1):
        if attempt_delivery(delivery_id) is None:
            return
        if retry < settings.TOLLGATE_ALERT_MAX_RETRIES:
            time.sleep(settings.TOLLGATE_ALERT_RETRY_BACKOFF_S * 2 ** retry)
    mark_delivery_failed(delivery_id)


def mark_delivery_failed(delivery_id: int) -> None:
    AlertDelivery.objects.filter(pk=delivery_id).update(status=AlertDelivery.Status.FAILED)
