"""The gateway's /metrics counts requests, tokens, cost and errors by org and model, with bounded labels."""

import re

import httpx
import pytest
from django.test import override_settings

from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


def sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_served_request_moves_the_request_token_and_cost_counters(live_gateway, openai_client, tenant):
    before = httpx.get(f"{live_gateway.url}/metrics").text
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "count me"}], max_tokens=4)
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    response = httpx.get(f"{live_gateway.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = response.text
    labels = {"org": "acme", "model": "tollgate-mini"}

    def moved(name, **extra):
        return sample(after, name, **labels, **extra) - sample(before, name, **labels, **extra)

    assert moved("tollgate_requests_total", status="ok") == 1
    assert moved("tollgate_tokens_total", token_type="output") == record.output_tokens
    assert moved("tollgate_cost_usd_total") == pytest.approx(float(record.cost_total))
    assert "tollgate_usage_outbox_pending" in after
    # Bounded label sets: never a request, key, user or feature label.
    assert not re.search(r'tollgate_\w+\{[^}]*(request|key|user|feature)=', after)


def test_refusals_are_counted_as_errors_by_org_and_model(live_gateway, openai_client, tenant):
    from decimal import Decimal

    from budgets.models import Budget

    Budget.objects.create(organization=tenant.org, amount=Decimal("0"))
    before = httpx.get(f"{live_gateway.url}/metrics").text
    with pytest.raises(Exception):
        openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": "y"}],
                                              max_tokens=2)
    after = httpx.get(f"{live_gateway.url}/metrics").text
    labels = {"org": "acme", "model": "tollgate-mini"}
    assert (sample(after, "tollgate_errors_total", **labels, error_code="budget_exceeded")
            - sample(before, "tollgate_errors_total", **labels, error_code="budget_exceeded")) == 1


def test_metrics_need_the_token_when_one_is_configured(client):
    with override_settings(TOLLGATE_METRICS_TOKEN="s3cret"):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
