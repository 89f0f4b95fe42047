"""Past its downgrade threshold a budget routes to the cheapest model with a lower output cap, and says so."""

import re
from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from budgets.models import Budget, BudgetCounter
from metering import pricing
from metering.models import UsageRecord
from tests.budgets.conftest import wait_for, worst_case
from tollgate.telemetry import flush_spans

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "summarise the toll road"}]


def _small(client, **headers):
    return client.chat.completions.with_raw_response.create(
        model="tollgate-small", messages=MESSAGES, max_tokens=4, temperature=0, extra_headers=headers or None)


def test_downgrade_starts_at_the_threshold_and_shows_in_header_ledger_and_dashboard(
        client, openai_client, tenant, clickhouse):
    first = _small(openai_client).parse()
    per_request = worst_case(pricing.catalog_entry("tollgate-small", timezone.now()), first.usage.prompt_tokens, 4)
    budget = Budget.objects.create(organization=tenant.org, amount=6 * per_request, action=Budget.Action.DOWNGRADE,
                                   downgrade_at_percent=50, downgrade_max_tokens=2)
    line = budget.amount / 2

    seen = []
    for _ in range(8):
        spent_before = BudgetCounter.objects.filter(budget=budget).values_list("spent", flat=True).first() or \
            UsageRecord.objects.get().cost_total
        raw = _small(openai_client)
        seen.append((spent_before, raw.headers.get("x-tollgate-downgraded"), raw.parse()))
    downgraded = [i for i, (_, header, _) in enumerate(seen) if header]
    assert downgraded, "never downgraded"
    at = downgraded[0]
    assert downgraded == list(range(at, len(seen)))  # once past the line, every request is downgraded
    assert all(spent < line for spent, _, _ in seen[:at])  # not before the threshold
    assert seen[at][0] >= line  # from the threshold on
    for _, header, completion in seen[at:]:
        assert header == "tollgate-small->tollgate-mini"
        assert completion.model == "tollgate-mini"
        assert completion.usage.completion_tokens <= 2  # the budget's output cap

    rows = UsageRecord.objects.filter(downgraded=True)
    assert rows.count() == len(seen) - at
    assert set(rows.values_list("model_requested", "model_served")) == {("tollgate-small", "tollgate-mini")}
    assert not UsageRecord.objects.filter(downgraded=False, model_served="tollgate-mini").exists()

    client.force_login(tenant.manager)
    html = client.get(f"/dashboards/{tenant.org.slug}/").content.decode()
    row = re.search(rf'<tr data-budget="{budget.pk}">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'data-testid="budget-downgraded">(\d+)<', row).group(1) == str(len(seen) - at)
    assert re.search(r'data-testid="budget-state">([^<]+)<', row).group(1) == "downgrading"


def test_x_quality_high_on_a_downgraded_budget_is_refused_not_downgraded(openai_client, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("0"), action=Budget.Action.DOWNGRADE)
    with pytest.raises(openai.RateLimitError) as err:
        _small(openai_client, **{"X-Quality": "high"})
    body = err.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "budget_downgraded"
    assert "tollgate-mini" in body["error"]["message"] and "acme" in body["error"]["message"]
    refusal = UsageRecord.objects.get()
    assert refusal.status == UsageRecord.Status.REFUSED and refusal.error_code == "budget_downgraded"
    assert refusal.cost_total == 0

    # Without the header the same request is served, downgraded; streams say so in their headers too.
    raw = _small(openai_client)
    assert raw.headers["x-tollgate-downgraded"] == "tollgate-small->tollgate-mini"
    with openai_client.chat.completions.with_streaming_response.create(
            model="tollgate-small", messages=MESSAGES, max_tokens=4, stream=True) as stream:
        assert stream.headers["x-tollgate-downgraded"] == "tollgate-small->tollgate-mini"
        assert any('"model":"tollgate-mini"' in line for line in stream.iter_lines())
    wait_for(lambda: UsageRecord.objects.filter(streamed=True, downgraded=True).count() == 1)


def test_a_downgrade_budget_keeps_serving_past_its_amount_and_the_span_says_downgraded(
        openai_client, tenant, clickhouse):
    Budget.objects.create(organization=tenant.org, amount=Decimal("0"), action=Budget.Action.DOWNGRADE)
    for _ in range(3):
        raw = _small(openai_client)
        assert raw.http_response.status_code == 200
        assert raw.parse().model == "tollgate-mini"
    assert UsageRecord.objects.filter(status=UsageRecord.Status.OK, downgraded=True).count() == 3

    record = UsageRecord.objects.filter(downgraded=True).first()
    assert flush_spans()
    (attrs,) = clickhouse.query(
        "SELECT SpanAttributes FROM otel_traces WHERE TraceId = {tid:String} AND ParentSpanId = ''",
        parameters={"tid": record.trace_id}).result_rows[0]
    assert attrs["tollgate.downgraded"] == "true"
    assert attrs["gen_ai.response.model"] == "tollgate-mini"
