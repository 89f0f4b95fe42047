"""Savings are recorded as what the removed tokens or the cache hit would have cost, and never billed."""

from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

import pytest

from metering import pricing
from metering.services import UsageDraft, record_usage

pytestmark = pytest.mark.django_db

AT = datetime(2026, 11, 20, tzinfo=dt_timezone.utc)


def test_tokens_removed_by_optimization_are_priced_at_the_input_rate_and_not_billed(make_tenant, catalog):
    acme = make_tenant("acme")
    entry = pricing.catalog_entry("tollgate-small", AT)
    cost = pricing.cost_of_tokens(entry, input_tokens=1000, output_tokens=100)
    record = record_usage(UsageDraft(
        request_id="r1", org_id=acme.org.pk, created_at=AT, model_requested="tollgate-small",
        model_served="tollgate-small", input_tokens=1000, output_tokens=100, tokens_saved=2_000_000,
        cost_input=cost.input, cost_output=cost.output, price_id=entry.price_id,
    ))
    assert record.savings_tokens == Decimal("1.000000000")  # 2M tokens × $0.50 per 1M
    assert record.cost_total == cost.total


def test_a_cache_hit_records_what_generation_would_have_cost(make_tenant, catalog):
    acme = make_tenant("acme")
    record = record_usage(UsageDraft(
        request_id="r2", org_id=acme.org.pk, created_at=AT, model_requested="tollgate-mini",
        model_served="tollgate-mini", attempt_kind="cache_hit", cache_hit=True,
        savings_cache=Decimal("0.000123000"),
    ))
    assert record.cache_hit and record.savings_cache == Decimal("0.000123000")
    assert record.cost_total == 0
