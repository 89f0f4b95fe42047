"""Cost headers are plain decimals a program can parse, never exponent notation, and equal the ledger."""

import re
from decimal import Decimal

import httpx
import pytest

from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

PLAIN_DECIMAL = re.compile(r"^(0|[1-9]\d*)(\.\d*[1-9])?$")


def test_an_embeddings_cost_of_millionths_of_a_cent_is_written_out(live_gateway, tenant):
    # A two-word input costs a few hundred-millionths of a dollar: str(Decimal) would say "6.0E-8".
    response = httpx.post(f"{live_gateway.v1}/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"},
                          headers={"Authorization": f"Bearer {tenant.plaintext}"}, timeout=60)
    assert response.status_code == 200
    header = response.headers["x-tollgate-cost"]
    assert PLAIN_DECIMAL.match(header), header
    row = UsageRecord.objects.get()
    assert Decimal(header) == row.cost_total < Decimal("0.000001")
    assert response.headers["x-tollgate-attempts"] == "1"


def test_a_chat_cost_header_is_a_plain_decimal_equal_to_the_ledger(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    header = raw.headers["x-tollgate-cost"]
    assert PLAIN_DECIMAL.match(header), header
    assert Decimal(header) == UsageRecord.objects.get().cost_total
