"""After shipping, ClickHouse (raw and hourly rollup) holds exactly the ledger's numbers, per org."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.core.management import call_command

from metering import queries
from metering.models import UsageRecord
from metering.shipping import ship_pending_usage

from .helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)

NOV = datetime(2026, 11, 1, tzinfo=dt_timezone.utc)


def test_gateway_traffic_totals_are_equal_in_ledger_raw_table_and_rollup(live_gateway, make_tenant, catalog,
                                                                          clickhouse):
    import openai

    acme, globex = make_tenant("acme"), make_tenant("globex")
    for tenant, n in ((acme, 3), (globex, 2)):
        client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0)
        for i in range(n):
            client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": f"hi {i}"}],
                                           max_tokens=4)
    assert ship_pending_usage() == 5

    start = datetime.now(dt_timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    report = {r.org_slug: r for r in queries.reconcile(start, start + timedelta(hours=3))}
    for tenant, n in ((acme, 3), (globex, 2)):
        line = report[tenant.org.slug]
        assert line.ledger_rows == line.clickhouse_rows == n
        assert line.ledger_cost == line.clickhouse_cost == line.rollup_cost == ledger_total(organization=tenant.org)
        assert line.ledger_cost > 0
        assert line.matches


def test_dashboard_totals_from_rollup_and_raw_edges_equal_the_ledger_to_the_nano_dollar(make_tenant, catalog,
                                                                                        clickhouse):
    acme = make_tenant("acme")
    # Spread over several hours, with a range that starts and ends mid-hour.
    times = [NOV + timedelta(hours=h, minutes=m) for h in range(5) for m in (5, 35)]
    for i, at in enumerate(times):
        record_attempt(acme.org, at, input_tokens=100 + i, output_tokens=7 * i)
    ship_pending_usage()
    start, end = NOV + timedelta(minutes=20), NOV + timedelta(hours=4, minutes=20)
    expected = ledger_total(created_at__gte=start, created_at__lt=end)
    totals = queries.usage_totals(acme.org.pk, start, end)
    assert totals.cost == expected
    assert totals.requests == UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end).count()
    raw_only = queries.usage_summary(queries.UsageFilter(start=start, end=end, org_ids=(acme.org.pk,)),
                                     use_rollup=False)
    assert raw_only[0]["cost_total"] == expected


def test_reconcile_usage_command_reports_a_match_and_exits_zero(make_tenant, catalog, clickhouse, capsys):
    acme = make_tenant("acme")
    record_attempt(acme.org, NOV + timedelta(days=3))
    record_attempt(acme.org, NOV + timedelta(days=20))
    ship_pending_usage()
    call_command("reconcile_usage", "--period", "2026-11")
    out = capsys.readouterr().out
    assert "acme" in out and "ok" in out
    assert str(ledger_total()) in out


def test_reconcile_usage_command_fails_on_a_row_clickhouse_never_got(make_tenant, catalog, clickhouse, capsys):
    acme = make_tenant("acme")
    record_attempt(acme.org, NOV + timedelta(days=3))
    ship_pending_usage()
    lost = record_attempt(acme.org, NOV + timedelta(days=4))
    UsageRecord.objects.filter(pk=lost.pk).update(shipped_at=NOV)  # marked shipped, never sent
    with pytest.raises(SystemExit) as exited:
        call_command("reconcile_usage", "--period", "2026-11")
    assert exited.value.code == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_reconcile_usage_counts_unshipped_rows_as_pending_not_as_a_mismatch(make_tenant, catalog, clickhouse,
                                                                          capsys):
    acme = make_tenant("acme")
    record_attempt(acme.org, NOV + timedelta(days=3))
    call_command("reconcile_usage", "--period", "2026-11")
    assert "pending" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        call_command("reconcile_usage", "--period", "2026-11", "--strict")
    assert Decimal(0) < ledger_total()


def test_reconcile_usage_checks_the_daily_rollup_too(make_tenant, catalog, clickhouse, capsys):
    acme = make_tenant("acme")
    record_attempt(acme.org, NOV + timedelta(days=3))
    ship_pending_usage()
    line = queries.reconcile(NOV, NOV + timedelta(days=30))[0]
    assert line.daily_rollup_cost == line.rollup_cost == ledger_total() > 0
    # The daily rollup alone disagrees (a row that never came from usage_events): the report says so.
    clickhouse.command(
        "INSERT INTO usage_daily (day, org_id, feature, model_served, pool, requests, cost_total) "
        "VALUES ('2026-11-05', %d, 'chat', 'tollgate-mini', '', 1, 0.5)" % acme.org.pk)
    with pytest.raises(SystemExit) as exited:
        call_command("reconcile_usage", "--period", "2026-11")
    assert exited.value.code == 1
    assert "MISMATCH" in capsys.readouterr().out
    # A period that is not whole UTC days cannot be cut by the daily rollup, so it is left out of the check.
    assert queries.reconcile(NOV + timedelta(hours=1), NOV + timedelta(days=30))[0].daily_rollup_cost is None

