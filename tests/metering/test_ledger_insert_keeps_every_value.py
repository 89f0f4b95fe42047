"""The ledger row goes to PostgreSQL as one JSON document (metering.services.ledger_insert): every value must
come back exactly as it went in: money to the last decimal place, aware microsecond timestamps, UUIDs, NULLs,
booleans, floats, text with quotes, backslashes and non-ASCII; a float JSON cannot carry is still written."""

import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from core import db
from metering.models import UsageRecord
from metering.services import UsageDraft, ledger_insert, ledger_row

pytestmark = pytest.mark.django_db(transaction=True)


def _draft(tenant, **values) -> UsageDraft:
    return UsageDraft(request_id="req-ledger-json", org_id=tenant.org.id, api_key_id=tenant.key.id,
                      created_at=datetime(2026, 12, 2, 4, 5, 6, 789012, tzinfo=timezone.utc),
                      model_requested="tollgate-mini", costs_final=True, **values)


def _write(record: UsageRecord) -> UsageRecord:
    db.run_transaction([ledger_insert(record)])
    return UsageRecord.objects.get(event_id=record.event_id)


def test_every_column_reads_back_as_written(tenant):
    record = ledger_row(_draft(
        tenant, feature='q"uo\\te ünïcødé 漢字 \'', model_served="tollgate-mini", trace_id="ab" * 16,
        input_tokens=1234567, output_tokens=3, queue_wait_ms=0.125, ttft_ms=None, tpot_ms=1e-7,
        duration_ms=12.5, engine_seconds=0.000123456789, cost_input=Decimal("0.000000123"),
        cost_output=Decimal("123456.123456789"), cache_hit=True, downgraded=False, route_tier=None,
        route_score=0.951, route_reason="line\nbreak\ttab"))
    stored = _write(record)
    for field in UsageRecord._meta.concrete_fields:
        assert getattr(stored, field.attname) == getattr(record, field.attname), field.name
    assert stored.created_at == datetime(2026, 12, 2, 4, 5, 6, 789012, tzinfo=timezone.utc)
    assert stored.cost_input == Decimal("0.000000123")


def test_a_float_json_cannot_hold_is_still_written(tenant):
    record = ledger_row(_draft(tenant, route_score=float("nan"), duration_ms=float("inf")))
    stored = _write(record)
    assert math.isnan(stored.route_score) and stored.duration_ms == float("inf")
