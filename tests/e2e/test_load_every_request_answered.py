"""A few hundred clients at once against a real web process (`manage.py serve`, the production server
settings) over real HTTP with the official client: every request gets an answer, 200 or a 429 that says
when to come back, never a dropped connection or a 5xx, and every answered request has its ledger row.
"""

import asyncio
from decimal import Decimal

import httpx
import openai
import pytest

from budgets.models import Budget
from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = 300


async def _storm(base_url: str, api_key: str) -> list:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http)

        async def one(i: int):
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="tollgate-mini", messages=[{"role": "user", "content": f"Load test {i}"}], max_tokens=2)
                return 200, raw.headers.get("x-request-id"), None
            except openai.APIStatusError as exc:
                return exc.status_code, exc.response.headers.get("x-request-id"), exc.response.headers.get(
                    "retry-after")
            except Exception as exc:  # a dropped connection, a timeout: what this test exists to catch
                return None, None, repr(exc)

        return await asyncio.gather(*(one(i) for i in range(CLIENTS)))


def test_three_hundred_concurrent_clients_all_get_an_answer_and_a_ledger_row(second_gateway, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("100"), action=Budget.Action.BLOCK)
    results = asyncio.run(_storm(second_gateway.v1, tenant.plaintext))

    failures = [r for r in results if r[0] not in (200, 429)]
    assert not failures, failures[:5]
    refused = [r for r in results if r[0] == 429]
    assert all(retry_after and retry_after.isdigit() for _, _, retry_after in refused), refused[:5]
    served = {request_id for status, request_id, _ in results if status == 200}
    assert len(served) == sum(1 for r in results if r[0] == 200) > 0
    rows = set(UsageRecord.objects.filter(organization=tenant.org, status=UsageRecord.Status.OK)
               .values_list("request_id", flat=True))
    assert served <= rows
    assert len(rows) == len(served)
