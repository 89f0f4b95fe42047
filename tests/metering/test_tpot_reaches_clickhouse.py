"""Time per output token is kept in the ledger and shipped; an older ClickHouse store gains the column
(and the daily rollup, filled from what it already holds) when the schema is ensured."""

from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

import clickhouse_connect
import pytest
import uuid6
from django.conf import settings

from metering import clickhouse as ch
from metering.models import UsageRecord
from metering.services import UsageDraft, record_usage
from metering.shipping import ship_pending_usage

pytestmark = pytest.mark.django_db(transaction=True)

NOV = datetime(2026, 11, 4, 9, 30, tzinfo=dt_timezone.utc)


def test_tpot_ms_is_recorded_and_shipped_and_unknown_stays_null(make_tenant, catalog, clickhouse):
    acme = make_tenant("acme")
    for request_id, tpot in (("fast", 12.5), ("unknown", None)):
        record_usage(UsageDraft(request_id=request_id, org_id=acme.org.pk, created_at=NOV,
                                model_requested="tollgate-mini", model_served="tollgate-mini", output_tokens=9,
                                ttft_ms=40.0, tpot_ms=tpot, cost_output=Decimal("0.0000036")))
    assert UsageRecord.objects.get(request_id="fast").tpot_ms == 12.5
    assert UsageRecord.objects.get(request_id="unknown").tpot_ms is None
    assert ship_pending_usage() == 2
    shipped = dict(clickhouse.query("SELECT request_id, tpot_ms FROM usage_events FINAL").result_rows)
    assert shipped == {"fast": 12.5, "unknown": None}


OLD_ROWS = """
INSERT INTO usage_events (event_id, request_id, timestamp, org_id, feature, model_served, status, cost_total)
VALUES ('{a}', 'a', '2026-10-30 23:59:59.5', 7, 'chat', 'tollgate-mini', 'ok', 0.000000001),
       ('{b}', 'b', '2026-10-31 00:00:00', 7, 'chat', 'tollgate-mini', 'ok', 1.25),
       ('{c}', 'c', '2026-10-31 13:00:00', 8, 'search', 'tollgate-large', 'ok', 2.000000002)
"""


def test_an_older_store_gains_tpot_ms_and_a_filled_daily_rollup(clickhouse):
    # A store as the previous release left it: usage_events without tpot_ms, the hourly rollup
    # only, and some rows. (A database of its own inside the session's chDB.)
    clickhouse.command("DROP DATABASE IF EXISTS before_daily")
    clickhouse.command("CREATE DATABASE before_daily")
    old = clickhouse_connect.get_client(dsn=settings.CLICKHOUSE_DSN, database="before_daily")
    try:
        old.command(ch.USAGE_EVENTS_DDL)
        for column in ch.USAGE_EVENTS_ADDED_COLUMNS:
            if not column.startswith("tpot_ms"):
                old.command(f"ALTER TABLE usage_events ADD COLUMN {column}")
        old.command(ch.USAGE_HOURLY_DDL)
        old.command(ch.USAGE_HOURLY_MV_DDL)
        old.command(OLD_ROWS.format(a=uuid6.uuid7(), b=uuid6.uuid7(), c=uuid6.uuid7()))
        assert "tpot_ms" not in old.query("SELECT * FROM usage_events LIMIT 0").column_names

        ch.create_schema(old)
        ch.create_schema(old)  # ensuring it again changes nothing

        assert "tpot_ms" in old.query("SELECT * FROM usage_events LIMIT 0").column_names
        daily = old.query("SELECT day, org_id, sum(requests), sum(cost_total) FROM usage_daily "
                          "GROUP BY day, org_id ORDER BY day, org_id").result_rows
        assert [(str(day), org, n, cost) for day, org, n, cost in daily] == [
            ("2026-10-30", 7, 1, Decimal("0.000000001")),
            ("2026-10-31", 7, 1, Decimal("1.25")),
            ("2026-10-31", 8, 1, Decimal("2.000000002")),
        ]
    finally:
        clickhouse.command("DROP DATABASE IF EXISTS before_daily")
        old.close()
