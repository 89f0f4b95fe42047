"""A price change mid-month bills each request at the price in force when it was received."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest

from metering.models import Price, UsageRecord
from metering.shipping import ship_pending_usage

from .helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)

CHANGE = datetime(2026, 11, 15, 12, 0, tzinfo=dt_timezone.utc)


def test_requests_before_and_after_a_price_change_keep_their_own_prices(make_tenant, catalog, clickhouse):
    acme = make_tenant("acme")
    old = Price.objects.get(model=catalog["tollgate-mini"])
    new = Price.objects.create(model=catalog["tollgate-mini"], effective_from=CHANGE, input_per_mtok=Decimal("1.00"),
                               cached_input_per_mtok=Decimal("0.10"), output_per_mtok=Decimal("4.00"))
    before = record_attempt(acme.org, CHANGE - timedelta(seconds=1), input_tokens=1_000_000, output_tokens=0)
    after = record_attempt(acme.org, CHANGE, input_tokens=1_000_000, output_tokens=0)
    assert (before.price_id, before.cost_total) == (old.pk, Decimal("0.100000000"))
    assert (after.price_id, after.cost_total) == (new.pk, Decimal("1.000000000"))

    # A later price change never rewrites what was billed.
    Price.objects.create(model=catalog["tollgate-mini"], effective_from=CHANGE + timedelta(days=5),
                         input_per_mtok=Decimal("9"), cached_input_per_mtok=Decimal("9"),
                         output_per_mtok=Decimal("9"))
    ship_pending_usage()
    month = clickhouse.query(
        "SELECT sum(cost_total) FROM usage_events FINAL WHERE toYYYYMM(timestamp) = 202611").result_rows[0][0]
    assert month == Decimal("1.100000000")
    assert [r.cost_total for r in UsageRecord.objects.order_by("created_at")] == [Decimal("0.1"), Decimal("1")]


def test_a_request_through_the_gateway_is_billed_at_the_price_in_force_now(openai_client, tenant, catalog):
    from django.utils import timezone

    new = Price.objects.create(model=catalog["tollgate-mini"], effective_from=timezone.now() - timedelta(seconds=1),
                               input_per_mtok=Decimal("2.00"), cached_input_per_mtok=Decimal("0.20"),
                               output_per_mtok=Decimal("8.00"))
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "price me"}], max_tokens=4)
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    uncached = record.input_tokens - record.cached_input_tokens
    expected = (uncached * new.input_per_mtok + record.cached_input_tokens * new.cached_input_per_mtok
                + record.output_tokens * new.output_per_mtok) / Decimal(1_000_000)
    assert record.price_id == new.pk
    assert record.cost_total == expected.quantize(Decimal("0.000000001"))
    assert Decimal(raw.headers["x-tollgate-cost"]) == record.cost_total
