"""Nothing lost, nothing twice: the shipper crashes mid-batch, ClickHouse goes away, batches replay."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from metering import clickhouse as ch
from metering.models import UsageRecord
from metering.shipping import ship_pending_usage

from .helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)

NOV = datetime(2026, 11, 2, tzinfo=dt_timezone.utc)
REPO = Path(__file__).resolve().parents[2]


def clickhouse_counts(client, org_id: int | None = None):
    where = f"WHERE org_id = {int(org_id)}" if org_id else ""
    raw_rows, raw_final, raw_cost = client.query(
        f"SELECT (SELECT count() FROM usage_events {where}), count(), sum(cost_total) FROM usage_events FINAL {where}"
    ).result_rows[0]
    rollup_requests, rollup_cost = client.query(f"SELECT sum(requests), sum(cost_total) FROM usage_hourly {where}"
                                                ).result_rows[0]
    return int(raw_rows), int(raw_final), raw_cost, int(rollup_requests), rollup_cost


@contextlib.contextmanager
def marking_shipped_fails():
    """A real failure of the ledger database right after ClickHouse accepted the batch."""
    with connection.cursor() as cursor:
        cursor.execute("""
            CREATE FUNCTION h4_refuse_mark() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'database went away while marking the batch shipped'; END $$ LANGUAGE plpgsql;
            CREATE TRIGGER h4_refuse_mark BEFORE UPDATE ON metering_usagerecord FOR EACH ROW
            WHEN (NEW.shipped_at IS NOT NULL) EXECUTE FUNCTION h4_refuse_mark();
        """)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER h4_refuse_mark ON metering_usagerecord; DROP FUNCTION h4_refuse_mark();")


@contextlib.contextmanager
def clickhouse_unreachable(closed_port: int):
    """Point the process's ClickHouse client at a port nobody listens on (HTTP), then put it back."""
    held = ch._client
    dsn = settings.CLICKHOUSE_DSN
    ch._client = None
    settings.CLICKHOUSE_DSN = f"http://127.0.0.1:{closed_port}/default"
    try:
        yield
    finally:
        ch._client = held
        settings.CLICKHOUSE_DSN = dsn


def test_crash_between_clickhouse_insert_and_marking_replays_without_double_counting(make_tenant, catalog,
                                                                                     clickhouse):
    acme = make_tenant("acme")
    for i in range(7):
        record_attempt(acme.org, NOV + timedelta(minutes=10 * i), output_tokens=10 + i)
    with marking_shipped_fails(), pytest.raises(Exception, match="database went away"):
        ship_pending_usage(batch_size=5)
    # ClickHouse got the first batch; the ledger still says nothing was shipped.
    assert clickhouse_counts(clickhouse)[0] == 5
    assert UsageRecord.objects.filter(shipped_at__isnull=True).count() == 7
    # Meanwhile an older row turns up (a long request settles late): the replay must not absorb it.
    record_attempt(acme.org, NOV - timedelta(minutes=5))

    assert ship_pending_usage(batch_size=5) == 8
    raw_rows, raw_final, raw_cost, rollup_requests, rollup_cost = clickhouse_counts(clickhouse)
    # The replayed batch was dropped on insert: not even the unmerged table or the rollup saw it twice.
    assert (raw_rows, raw_final, rollup_requests) == (8, 8, 8)
    assert raw_cost == rollup_cost == ledger_total()
    assert not UsageRecord.objects.filter(shipped_at__isnull=True).exists()


def test_rows_wait_while_clickhouse_is_down_and_ship_when_it_is_back(make_tenant, catalog, clickhouse):
    from tests.conftest import free_port

    acme = make_tenant("acme")
    for i in range(4):
        record_attempt(acme.org, NOV + timedelta(hours=i))
    with clickhouse_unreachable(free_port()):
        for _ in range(3):  # the shipper keeps trying; nothing leaves the outbox
            with pytest.raises(Exception):
                ship_pending_usage()
    assert UsageRecord.objects.filter(shipped_at__isnull=True).count() == 4
    assert clickhouse_counts(clickhouse)[:2] == (0, 0)

    assert ship_pending_usage() == 4
    raw_rows, raw_final, raw_cost, rollup_requests, rollup_cost = clickhouse_counts(clickhouse)
    assert (raw_rows, raw_final, rollup_requests) == (4, 4, 4)
    assert raw_cost == rollup_cost == ledger_total()


def test_requests_served_during_an_outage_are_billed_and_shipped_later(openai_client, tenant, clickhouse):
    from tests.conftest import free_port

    with clickhouse_unreachable(free_port()):
        for content in ("a", "b"):
            openai_client.chat.completions.create(model="tollgate-mini",
                                                  messages=[{"role": "user", "content": content}], max_tokens=3)
        with pytest.raises(Exception):
            ship_pending_usage()
    assert UsageRecord.objects.filter(shipped_at__isnull=True).count() == 2
    assert ship_pending_usage() == 2
    assert clickhouse_counts(clickhouse)[2] == ledger_total() > 0


_SHIPPER_SCRIPT = textwrap.dedent("""
    import django, os, sys
    django.setup()
    from metering.shipping import ship_pending_usage
    from metering.clickhouse import get_client
    if sys.argv[1] == "ship":
        print(ship_pending_usage(batch_size=int(sys.argv[2])), flush=True)
    else:
        c = get_client()
        raw, = c.query("SELECT count() FROM usage_events").result_rows[0]
        final, cost = c.query("SELECT count(), sum(cost_total) FROM usage_events FINAL").result_rows[0]
        req, rcost = c.query("SELECT sum(requests), sum(cost_total) FROM usage_hourly").result_rows[0]
        print(raw, final, cost, req, rcost, flush=True)
""")


def test_shipper_killed_with_sigkill_mid_batch_is_replayed_exactly_once(make_tenant, catalog, tmp_path):
    """A real separate shipper process (its own embedded ClickHouse folder), killed while marking a batch."""
    acme = make_tenant("acme")
    for i in range(6):
        record_attempt(acme.org, NOV + timedelta(minutes=i), output_tokens=20 + i)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tollgate.settings", CLICKHOUSE_DSN=f"chdb:///{tmp_path / 'ch'}",
               DATABASE_URL=_database_url(), TOLLGATE_SHIP_LEASE_S="0", PYTHONPATH=str(REPO),
               TOLLGATE_VAR_DIR=str(tmp_path / "var"), TOLLGATE_INPROCESS_SHIPPER="false")
    script = tmp_path / "shipper.py"
    script.write_text(_SHIPPER_SCRIPT)
    # Marking the batch shipped hangs (a trigger sleeps), so the process is killed right after ClickHouse took it.
    with connection.cursor() as cursor:
        cursor.execute("""
            CREATE FUNCTION h4_slow_mark() RETURNS trigger AS $$
            BEGIN PERFORM pg_sleep(120); RETURN NEW; END $$ LANGUAGE plpgsql;
            CREATE TRIGGER h4_slow_mark BEFORE UPDATE ON metering_usagerecord FOR EACH ROW
            WHEN (NEW.shipped_at IS NOT NULL) EXECUTE FUNCTION h4_slow_mark();
        """)
        shipper = subprocess.Popen([sys.executable, str(script), "ship", "4"], env=env, cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            backend = _wait_for_marking(shipper, cursor)
            shipper.send_signal(signal.SIGKILL)
            shipper.wait(10)
        finally:
            # The database notices the dead client and ends its session (as client_connection_check_interval would).
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                           "AND datname = current_database()")
            time.sleep(0.5)
            cursor.execute("DROP TRIGGER h4_slow_mark ON metering_usagerecord; DROP FUNCTION h4_slow_mark();")
    assert backend
    assert shipper.returncode == -signal.SIGKILL
    assert UsageRecord.objects.filter(shipped_at__isnull=True).count() == 6
    counted = subprocess.run([sys.executable, str(script), "count"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert counted.stdout.split()[:2] == ["4", "4"]  # the killed shipper's batch did reach ClickHouse

    after = subprocess.run([sys.executable, str(script), "ship", "4"], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert after.returncode == 0, after.stderr[-2000:]
    assert after.stdout.split() == ["6"]
    counted = subprocess.run([sys.executable, str(script), "count"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    raw, final, cost, rollup_requests, rollup_cost = counted.stdout.split()
    assert (raw, final, rollup_requests) == ("6", "6", "6")
    assert str(ledger_total()) == cost == rollup_cost


def _database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _wait_for_marking(process, cursor, timeout: float = 90.0) -> int:
    """Wait until the shipper's database session sleeps in the trigger, i.e. it is marking the batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"shipper exited early: {process.stderr.read()[-2000:]}")
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event = 'PgSleep'")
        row = cursor.fetchone()
        if row:
            return row[0]
        time.sleep(0.1)
    raise AssertionError("the shipper never reached the marking step")
