"""manage.py plan_capacity end to end (table, JSON, PNG charts, the stored plan) and export_trace from the
usage ledger; bad input is a CommandError that says what and where."""

import json
from datetime import datetime, timedelta, timezone
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from capacity.models import CapacityPlan
from capacity.traces import read_trace, write_trace
from capacity.synthetic import diurnal_trace
from metering.models import UsageRecord
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("plan_capacity", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_plan_from_a_trace_file_prints_the_table_writes_json_and_pngs_and_is_stored(tmp_path):
    trace = tmp_path / "day.csv"
    write_trace(diurnal_trace(days=1, seed=3, peak_rps=1, batch_requests_per_day=500), trace)
    out, err = run("--trace", str(trace), "--json", str(tmp_path / "plan.json"), "--png-dir",
                   str(tmp_path / "png"), "--usd-per-replica-hour", "4.00", "--step", "60")
    for name in ("static", "autoscaled", "separated"):
        assert f"\n{name} " in out
    assert "autoscaled saves $" in out and "$4.00/replica-hour" in out
    assert "h simulated" in err  # progress for long replays
    result = json.loads((tmp_path / "plan.json").read_text())
    assert {s["name"] for s in result["scenarios"]} == {"static", "autoscaled", "separated"}
    static = next(s for s in result["scenarios"] if s["name"] == "static")
    # Money stays Decimal text: replica-hours x the price, to the cent.
    from decimal import Decimal
    hours = sum(Decimal(p["replica_hours"]) for p in static["pools"])
    assert abs(Decimal(static["cost_usd"]) - hours * 4) <= Decimal("0.01")
    for name in ("capacity-replicas", "capacity-cost", "capacity-slo"):
        png = (tmp_path / "png" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    plan = CapacityPlan.objects.get()
    assert plan.trace == str(trace) and plan.result["scenarios"] == result["scenarios"]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        run("--trace", str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"at": "2026-01-05T00:00:00Z", "kind": "interactive", "model": "m", "prompt_tokens": 1, '
                   '"output_tokens": 1}\n{"at": "soon"}\n')
    with pytest.raises(CommandError, match=r"bad trace: .*line 2: "):
        run("--trace", str(bad))
    with pytest.raises(CommandError, match="bad curve"):
        run("--synthetic", "diurnal", "--curve", str(bad))
    with pytest.raises(CommandError, match="--days must be above 0"):
        run("--synthetic", "diurnal", "--days", "0")
    with pytest.raises(CommandError, match="--usd-per-replica-hour must be a decimal"):
        run("--synthetic", "diurnal", "--days", "1", "--usd-per-replica-hour", "lots")
    assert not CapacityPlan.objects.exists()


def test_export_trace_writes_the_ledgers_engine_attempts_as_demand(tmp_path, make_tenant, catalog):
    acme = make_tenant("acme")
    t0 = datetime(2026, 2, 2, 9, tzinfo=timezone.utc)
    record_attempt(acme.org, t0, input_tokens=120, output_tokens=30)
    record_attempt(acme.org, t0 + timedelta(minutes=1), batch_id="batch_1", output_tokens=200)
    record_attempt(acme.org, t0 + timedelta(minutes=2), endpoint="embeddings", output_tokens=0)
    record_attempt(acme.org, t0 + timedelta(minutes=3), cache_hit=True, attempt_kind="cache_hit")
    record_attempt(acme.org, t0 + timedelta(minutes=4), status=UsageRecord.Status.REFUSED, output_tokens=0)
    record_attempt(acme.org, t0 + timedelta(days=2))  # outside the range
    out = StringIO()
    call_command("export_trace", "--since", "2026-02-02", "--until", "2026-02-03", "--out", str(tmp_path / "t.jsonl"),
                 stdout=out)
    assert out.getvalue().startswith("3 requests")
    trace = read_trace(tmp_path / "t.jsonl")
    assert [(r.kind, r.output_tokens) for r in trace] == [("interactive", 30), ("batch", 200), ("embedding", 0)]
    assert trace[0].at == t0 and trace[0].prompt_tokens == 120 and trace[0].model == "tollgate-mini"
    assert trace[1].deadline == trace[1].at + timedelta(hours=24)
    with pytest.raises(CommandError, match="--until must be after --since"):
        call_command("export_trace", "--since", "2026-02-03", "--until", "2026-02-02", "--out", str(tmp_path / "x"))


def test_a_replica_hour_costs_the_pools_gpu_rate_when_it_has_one(settings):
    from decimal import Decimal

    from capacity.services import replica_hour_price
    from metering.models import PoolRate

    settings.TOLLGATE_CAPACITY_REPLICA_HOUR_USD = "2.50"
    assert replica_hour_price("interactive") == (Decimal("2.50"), 1, "TOLLGATE_CAPACITY_REPLICA_HOUR_USD")
    PoolRate.objects.create(pool="interactive", effective_from=datetime(2026, 1, 1, tzinfo=timezone.utc),
                            usd_per_gpu_hour=Decimal("3.10"), gpus=8, gpus_per_replica=2)
    from metering.costs import forget_cost_settings
    forget_cost_settings()
    price, gpus, source = replica_hour_price("interactive")
    assert (price, gpus) == (Decimal("6.20"), 2) and "pool rate" in source
