"""A generation's deadline: a partial answer when the caller takes one, a 504 otherwise; billed as produced."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import pytest

from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

LONG = dict(model="tollgate-large", max_tokens=1000, temperature=0,
            messages=[{"role": "user", "content": "Write a very long essay about invoices."}])


def rows(request_id: str) -> list[UsageRecord]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = list(UsageRecord.objects.filter(request_id=request_id))
        if found:
            return found
        time.sleep(0.05)
    return []


def test_past_its_deadline_a_generation_returns_what_was_made_when_the_caller_allows_it(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        **LONG, extra_headers={"X-Tollgate-Timeout": "0.5", "X-Tollgate-Partial": "allow"})
    answer = raw.parse()

    assert answer.choices[0].finish_reason == "length"
    assert raw.headers["x-tollgate-partial"] == "timeout"
    assert 0 < answer.usage.completion_tokens < LONG["max_tokens"]
    (row,) = rows(raw.headers["x-request-id"])
    assert row.status == UsageRecord.Status.OK and row.output_tokens == answer.usage.completion_tokens
    assert Decimal(raw.headers["x-tollgate-cost"]) == row.cost_total > 0


def test_a_streamed_generation_past_its_deadline_ends_with_length_when_allowed(openai_client):
    finish = [c.choices[0].finish_reason for c in openai_client.chat.completions.create(
        **LONG, stream=True, extra_headers={"X-Tollgate-Timeout": "0.5", "X-Tollgate-Partial": "allow"})
        if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]


def test_past_its_deadline_without_partial_answers_504_and_bills_nothing(openai_client):
    with pytest.raises(openai.APIStatusError) as failed:
        openai_client.chat.completions.create(**LONG, extra_headers={"X-Tollgate-Timeout": "0.5"})

    assert failed.value.status_code == 504
    assert failed.value.body["code"] == "generation_timeout"
    (row,) = rows(failed.value.response.headers["x-request-id"])
    assert row.status == UsageRecord.Status.ERROR and row.error_code == "generation_timeout"
    assert row.output_tokens > 0 and row.cost_total == 0  # recorded as failure cost, not billed


@pytest.mark.parametrize("headers", [{"X-Tollgate-Timeout": "soon"}, {"X-Tollgate-Timeout": "0"},
                                     {"X-Tollgate-Timeout": "nan"}, {"X-Tollgate-Timeout": "1e9"},
                                     {"X-Tollgate-Partial": "maybe"}])
def test_a_malformed_deadline_header_is_a_400_naming_it(live_gateway, tenant, headers):
    response = httpx.post(f"{live_gateway.v1}/chat/completions", headers={
        "Authorization": f"Bearer {tenant.plaintext}", **headers}, json={**LONG, "max_tokens": 1}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == next(iter(headers))
    assert not UsageRecord.objects.exists()
