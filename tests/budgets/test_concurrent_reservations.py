"""200 requests at once against a budget that fits about 50: reservations keep spend inside it."""

import asyncio
from collections import Counter

import openai
import pytest

from budgets.models import Budget, BudgetCounter, BudgetReservation
from metering import pricing
from metering.models import UsageRecord
from tests.budgets.conftest import worst_case

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "count the tolls"}]
MAX_TOKENS = 2


async def _fire(base_url: str, key: str, n: int) -> list[tuple[int, str, str | None]]:
    """n concurrent completions; returns (HTTP status, request id, error code) per request."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)

    async def one():
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="tollgate-mini", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
            return raw.http_response.status_code, raw.headers["x-request-id"], None
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers["x-request-id"], exc.code

    try:
        return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await client.close()


def test_200_concurrent_requests_never_spend_past_the_budget_and_ledger_equals_counters(
        live_gateway, openai_client, tenant):
    # One request first, to learn the prompt's token count (the reservation's input side).
    first = openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=MAX_TOKENS,
                                                  temperature=0)
    entry = pricing.catalog_entry("tollgate-mini", UsageRecord.objects.get().created_at)
    per_request = worst_case(entry, first.usage.prompt_tokens, MAX_TOKENS)
    already = UsageRecord.objects.get().cost_total
    # Room for 50 more worst cases on top of what this month already spent.
    budget = Budget.objects.create(organization=tenant.org, amount=already + 50 * per_request,
                                   action=Budget.Action.BLOCK)

    results = asyncio.run(_fire(live_gateway.v1, tenant.plaintext, 200))

    statuses = Counter(status for status, _, _ in results)
    served_ids = {rid for status, rid, _ in results if status == 200}
    refused_ids = {rid for status, rid, code in results if status == 429 and code == "budget_exceeded"}
    assert statuses[200] + len(refused_ids) == 200, statuses  # every request was served or refused by budget
    assert not served_ids & refused_ids  # no request is both served and refused
    assert 45 <= len(served_ids) <= 55, len(served_ids)

    rows = UsageRecord.objects.filter(organization=tenant.org).exclude(request_id=first.id.removeprefix("chatcmpl-"))
    assert Counter(rows.values_list("request_id", flat=True)).most_common(1)[0][1] == 1  # one ledger row each
    assert set(rows.filter(status=UsageRecord.Status.OK).values_list("request_id", flat=True)) == served_ids
    refused_rows = rows.filter(status=UsageRecord.Status.REFUSED)
    assert set(refused_rows.values_list("request_id", flat=True)) == refused_ids
    assert all(r.cost_total == 0 and r.error_code == "budget_exceeded" for r in refused_rows)

    ledger_total = sum(r.cost_total for r in UsageRecord.objects.filter(organization=tenant.org))
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.spent == ledger_total  # the ledger equals the counter
    assert counter.reserved == 0 and not BudgetReservation.objects.exists()  # every reservation settled
    # Overspend is bounded by what was reserved; with worst-case reservations it is zero.
    assert ledger_total <= budget.amount
    assert budget.amount - ledger_total < 2 * per_request  # and the budget was actually used up
