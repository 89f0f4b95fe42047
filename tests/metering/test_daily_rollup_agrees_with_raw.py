"""The daily rollup holds exactly what the raw table holds, after shipping and after a replayed batch,
and usage queries answer the same from daily + hourly + raw tiers as from the raw table alone."""

import itertools
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest

from metering import queries
from metering.models import UsageRecord
from metering.shipping import ship_pending_usage

from .helpers import ledger_total, record_attempt
from .test_shipping_loses_nothing_and_counts_once import marking_shipped_fails

pytestmark = pytest.mark.django_db(transaction=True)

NOV = datetime(2026, 11, 3, tzinfo=dt_timezone.utc)

PER_DAY_SQL = """
SELECT day, org_id, feature, model_served, pool, sum(requests), sum(input_tokens), sum(output_tokens),
       sum(cost_total), sum(cost_base)
FROM {source} GROUP BY day, org_id, feature, model_served, pool ORDER BY day, org_id, feature, model_served, pool
"""

RAW_PER_DAY_SQL = """
SELECT toDate(timestamp, 'UTC') AS day, org_id, feature, model_served, pool, countIf(status != 'refused'),
       sum(toUInt64(input_tokens)), sum(toUInt64(output_tokens)), sum(toDecimal128(cost_total, 9)),
       sum(toDecimal128(cost_base, 9))
FROM usage_events FINAL
GROUP BY day, org_id, feature, model_served, pool ORDER BY day, org_id, feature, model_served, pool
"""


def daily_equals_raw(client) -> list:
    daily = client.query(PER_DAY_SQL.format(source="usage_daily")).result_rows
    raw = client.query(RAW_PER_DAY_SQL).result_rows
    assert daily == raw
    return daily


def spread_usage(tenant, days: int = 4):
    """Usage every 5 h 10 min over several days: several days, hours and minutes per bucket."""
    at, end, i = NOV - timedelta(hours=3), NOV + timedelta(days=days), 0
    while at < end:
        record_attempt(tenant.org, at, feature=("chat", "search")[i % 2],
                       model=("tollgate-mini", "tollgate-small")[i % 3 == 0], input_tokens=50 + i, output_tokens=3 + i)
        at += timedelta(hours=5, minutes=10)
        i += 1


def test_daily_rollup_equals_raw_table_after_shipping(make_tenant, catalog, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    spread_usage(acme)
    spread_usage(globex, days=2)
    ship_pending_usage(batch_size=7)  # many small batches, each its own insert
    rows = daily_equals_raw(clickhouse)
    assert len({row[0] for row in rows}) == 5  # the day before NOV and four more
    assert sum(row[8] for row in rows) == ledger_total()


def test_replayed_batch_leaves_the_daily_rollup_exact(make_tenant, catalog, clickhouse):
    acme = make_tenant("acme")
    spread_usage(acme, days=2)
    with marking_shipped_fails(), pytest.raises(Exception, match="database went away"):
        ship_pending_usage(batch_size=4)
    assert clickhouse.query("SELECT sum(requests) FROM usage_daily").result_rows[0][0] == 4
    # ClickHouse took the batch; the ledger still holds it as unshipped, so it is sent again.
    assert ship_pending_usage(batch_size=4) > 4
    daily_equals_raw(clickhouse)
    # Summed over all parts, merged or not: a replay that reached usage_daily would count twice here.
    requests, cost = clickhouse.query("SELECT sum(requests), sum(cost_total) FROM usage_daily").result_rows[0]
    assert requests == UsageRecord.objects.count()
    assert cost == ledger_total()


def test_whole_days_across_orgs_are_answered_from_the_daily_rollup(make_tenant, catalog, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    spread_usage(acme)
    spread_usage(globex)
    ship_pending_usage()
    start, end = NOV, NOV + timedelta(days=3)
    expected = ledger_total(created_at__gte=start, created_at__lt=end)
    # Drop the hourly rollup and the raw rows: whole UTC days must still add up, from usage_daily alone.
    clickhouse.command("TRUNCATE TABLE usage_hourly")
    clickhouse.command("TRUNCATE TABLE usage_events")
    for org_ids in (None, (acme.org.pk, globex.org.pk)):
        (row,) = queries.usage_summary(queries.UsageFilter(start=start, end=end, org_ids=org_ids))
        assert row["cost_total"] == expected > 0


@pytest.mark.parametrize("group_by, tz", [
    ((), "UTC"), (("feature",), "UTC"), (("org", "model"), "UTC"), (("day",), "UTC"),
    (("day",), "Asia/Kolkata"), (("hour",), "UTC"), (("pool", "model_requested"), "UTC"),
])
def test_tiers_agree_with_the_raw_table(make_tenant, catalog, clickhouse, group_by, tz):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    spread_usage(acme)
    spread_usage(globex, days=3)
    ship_pending_usage()
    ranges = [
        (NOV, NOV + timedelta(days=3)),  # whole days: daily only
        (NOV + timedelta(hours=2), NOV + timedelta(days=3, hours=5)),  # whole hours: hourly around daily
        (NOV - timedelta(hours=2, minutes=50), NOV + timedelta(days=2, hours=7, minutes=33)),  # all three tiers
        (NOV + timedelta(hours=1, minutes=10), NOV + timedelta(hours=20, minutes=5)),  # under a day
        # The same instant written in another zone: tiers are cut on UTC boundaries.
        (datetime(2026, 11, 3, 8, 0, tzinfo=dt_timezone(timedelta(hours=5, minutes=30))),
         datetime(2026, 11, 6, 2, 0, tzinfo=dt_timezone(timedelta(hours=5, minutes=30)))),
    ]
    for (start, end), org_ids in itertools.product(ranges, (None, (acme.org.pk, globex.org.pk), (acme.org.pk,))):
        f = queries.UsageFilter(start=start, end=end, tz=tz, org_ids=org_ids)
        tiered = queries.usage_summary(f, group_by)
        hourly = queries.usage_summary(f, group_by, use_daily=False)
        raw = queries.usage_summary(f, group_by, use_rollup=False)
        assert tiered == hourly == raw, (start, end, org_ids)
        in_range = {"created_at__gte": start, "created_at__lt": end}
        if org_ids:
            in_range["organization_id__in"] = org_ids
        assert sum(row["cost_total"] for row in raw) == ledger_total(**in_range)
        assert queries.usage_summary_count(f, group_by) == len(raw)
