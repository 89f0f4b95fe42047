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


TOKEN = "scrape-token-for-tests"


@pytest.fixture
def scrape(live_gateway, settings):
    """/metrics as a Prometheus holding the metrics token scrapes it (every series, per-org ones too)."""
    settings.TOLLGATE_METRICS_TOKEN = TOKEN

    def get() -> httpx.Response:
        return httpx.get(f"{live_gateway.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    return get


def test_a_served_request_moves_the_request_token_and_cost_counters(scrape, openai_client, tenant):
    before = scrape().text
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "count me"}], max_tokens=4)
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    response = scrape()
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


def test_refusals_are_counted_as_errors_by_org_and_model(scrape, openai_client, tenant):
    from decimal import Decimal

    from budgets.models import Budget

    Budget.objects.create(organization=tenant.org, amount=Decimal("0"))
    before = scrape().text
    with pytest.raises(Exception):
        openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": "y"}],
                                              max_tokens=2)
    after = scrape().text
    labels = {"org": "acme", "model": "tollgate-mini"}
    assert (sample(after, "tollgate_errors_total", **labels, error_code="budget_exceeded")
            - sample(before, "tollgate_errors_total", **labels, error_code="budget_exceeded")) == 1


def test_metrics_need_the_token_when_one_is_configured(client):
    with override_settings(TOLLGATE_METRICS_TOKEN="s3cret"):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_without_the_token_no_tenant_spend_is_shown(live_gateway, openai_client, tenant):
    openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": "z"}],
                                          max_tokens=2)
    text = httpx.get(f"{live_gateway.url}/metrics").text
    assert not re.search(r'\borg="', text)  # no series of any org: requests, tokens, dollars, errors
    assert "acme" not in text
    assert "tollgate_usage_outbox_pending" in text  # the platform's own health stays public


def test_per_org_series_can_be_turned_on_for_a_private_scrape(live_gateway, openai_client, tenant, settings):
    settings.TOLLGATE_METRICS_PER_ORG = True
    openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": "z"}],
                                          max_tokens=2)
    text = httpx.get(f"{live_gateway.url}/metrics").text
    assert sample(text, "tollgate_requests_total", org="acme", model="tollgate-mini", status="ok") >= 1


def test_every_error_answer_is_counted_even_without_a_ledger_row(scrape, live_gateway, tenant):
    headers = {"Authorization": f"Bearer {tenant.plaintext}"}
    cases = [
        ("POST", "/v1/chat/completions", b"{not json", "chat.completions", "400", "invalid_json"),
        ("GET", "/v1/chat/completions", None, "chat.completions", "405", "method_not_allowed"),
        ("GET", "/v1/no/such/route", None, "other", "404", "not_found"),
        ("POST", "/v1/embeddings", b'{"model": "nope", "input": "x"}', "embeddings", "404", "model_not_found"),
    ]
    before = scrape().text
    for method, path, body, *_ in cases:
        assert httpx.request(method, live_gateway.url + path, content=body, headers=headers).status_code >= 400
    after = scrape().text
    for *_, endpoint, status, code in cases:
        labels = {"endpoint": endpoint, "status": status, "code": code}
        assert sample(after, "tollgate_http_errors_total", **labels) - sample(
            before, "tollgate_http_errors_total", **labels) == 1, labels
    assert UsageRecord.objects.count() == 0
