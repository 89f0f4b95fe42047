"""`manage.py pool_statement` prints a pool's month: total, used, idle, per-org charges and platform
overhead, and in every format the lines add up to the total exactly."""

import csv
import io
import json
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from metering.models import ChargebackMode, ChargebackPolicy, PoolRate, UsageRecord

from .helpers import record_attempt

pytestmark = pytest.mark.django_db

NOV = datetime(2026, 11, 1, tzinfo=dt_timezone.utc)
NOVEMBER_COST = Decimal("2.50") * 4 * 30 * 24  # $/GPU-hour × GPUs × hours


@pytest.fixture
def month(make_tenant, catalog):
    """Three orgs (shared idle, overhead, token-priced) on one pool in November, one in October."""
    PoolRate.objects.create(pool="interactive", effective_from=NOV - timedelta(days=60),
                            usd_per_gpu_hour=Decimal("2.50"), gpus=4, gpus_per_replica=2)
    acme, globex, initech = (make_tenant(slug) for slug in ("acme", "globex", "initech"))
    ChargebackPolicy.objects.create(organization=acme.org, mode=ChargebackMode.GPU_SHARED)
    ChargebackPolicy.objects.create(organization=globex.org, mode=ChargebackMode.GPU_OVERHEAD)
    # Awkward engine-seconds, so idle shares do not divide evenly.
    for i, seconds in enumerate([1.3, 7.77, 0.01, 123.456, 42.0, 3.33333, 999.999]):
        org = (acme, globex, initech)[i % 3].org
        record_attempt(org, NOV + timedelta(days=i, hours=i), pool="interactive", engine_seconds=seconds)
    record_attempt(acme.org, NOV + timedelta(days=3), pool="interactive", engine_seconds=5.0,
                   status=UsageRecord.Status.ERROR)  # failed, but it held the GPU: charged on the statement
    record_attempt(acme.org, NOV - timedelta(days=2), pool="interactive", engine_seconds=500.0)  # October
    return acme, globex, initech


def run(*args) -> str:
    out = io.StringIO()
    call_command("pool_statement", *args, stdout=out)
    return out.getvalue()


def test_csv_lines_add_up_to_the_pools_cost(month):
    acme, globex, initech = month
    rows = list(csv.DictReader(io.StringIO(run("--pool", "interactive", "--period", "2026-11", "--format", "csv"))))
    orgs = {r["org"]: r for r in rows if r["line"] == "org"}
    (overhead,) = [r for r in rows if r["line"] == "platform_overhead"]
    (total,) = [r for r in rows if r["line"] == "total"]

    assert Decimal(total["charge"]) == NOVEMBER_COST
    assert sum(Decimal(r["charge"]) for r in orgs.values()) + Decimal(overhead["charge"]) == NOVEMBER_COST
    for r in orgs.values():
        assert Decimal(r["used"]) + Decimal(r["idle_share"]) == Decimal(r["charge"])
    november = UsageRecord.objects.filter(created_at__gte=NOV, created_at__lt=NOV + timedelta(days=30))
    for tenant in month:
        used = sum(r.cost_gpu for r in november.filter(organization=tenant.org))
        assert Decimal(orgs[tenant.org.slug]["used"]) == used  # October's row is not in November
    assert Decimal(total["used"]) == sum(r.cost_gpu for r in november)
    # Only the sharing org carries idle time; the others' shares stay with the platform.
    assert Decimal(orgs["acme"]["idle_share"]) > 0
    assert Decimal(orgs["globex"]["idle_share"]) == Decimal(orgs["initech"]["idle_share"]) == 0
    assert orgs["acme"]["mode"] == "gpu_shared" and orgs["initech"]["mode"] == "tokens"


def test_json_matches_the_api_shape_and_adds_up(month):
    body = json.loads(run("--pool", "interactive", "--period", "2026-11", "--format", "json"))
    assert body["pool"] == "interactive"
    assert Decimal(body["total"]) == NOVEMBER_COST
    charged = sum(Decimal(line["charge"]) for line in body["lines"])
    assert charged + Decimal(body["platform_overhead"]) == Decimal(body["total"])
    assert Decimal(body["used"]) + Decimal(body["idle"]) == Decimal(body["total"])
    # 2 replicas (4 GPUs, 2 per replica) × 30 days of seconds.
    assert Decimal(body["replica_seconds"]) == 2 * 30 * 86400
    assert body["utilization"] == pytest.approx(body["engine_seconds"] / (2 * 30 * 86400))


def test_the_table_shows_every_line_and_the_total(month):
    out = run("--pool", "interactive", "--period", "2026-11")
    assert "Pool statement: interactive, 2026-11-01 00:00 to 2026-12-01 00:00 UTC" in out
    lines = out.splitlines()
    charges = {}
    for line in lines:
        cells = line.split()
        if cells and cells[0] in ("acme", "globex", "initech"):
            charges[cells[0]] = Decimal(cells[-1])
    overhead = Decimal(next(line for line in lines if line.startswith("platform overhead")).split()[-1])
    total = Decimal(next(line for line in lines if line.startswith("total")).split()[-1])
    assert set(charges) == {"acme", "globex", "initech"}
    assert sum(charges.values()) + overhead == total == NOVEMBER_COST
    assert "utilization" in out


def test_start_and_end_give_the_same_statement_as_the_month(month):
    by_period = run("--pool", "interactive", "--period", "2026-11", "--format", "json")
    by_range = run("--pool", "interactive", "--start", "2026-11-01", "--end", "2026-12-01T00:00:00Z",
                   "--format", "json")
    assert json.loads(by_period) == json.loads(by_range)


def test_a_pool_nobody_used_is_all_platform_overhead(make_tenant, catalog):
    PoolRate.objects.create(pool="batch", effective_from=NOV, usd_per_gpu_hour=Decimal("1.00"), gpus=2)
    out = run("--pool", "batch", "--period", "2026-11", "--format", "json")
    body = json.loads(out)
    assert body["lines"] == [] and Decimal(body["platform_overhead"]) == Decimal(body["total"]) == 1440


@pytest.mark.parametrize("args, message", [
    (["--pool", "nope", "--period", "2026-11"], "no pool rate"),
    (["--pool", "interactive", "--period", "November"], "2026-11"),
    (["--pool", "interactive"], "--period"),
    (["--pool", "interactive", "--period", "2026-11", "--start", "2026-11-01"], "not both"),
    (["--pool", "interactive", "--start", "2026-12-01", "--end", "2026-11-01"], "before"),
])
def test_bad_arguments_are_explained(month, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)
