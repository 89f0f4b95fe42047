"""The acceptance test of the capacity plan (issue 13): on a synthetic diurnal trace, autoscaling through the
real recommender costs less than static capacity sized to the peak at SLO attainment equal within the
plan's tolerance (1 point), and separating batch from interactive traffic beats one shared pool."""

from pathlib import Path

import pytest

from capacity.curves import load_curve
from capacity.planning import PlanInputs, run_plan, static_replicas
from capacity.synthetic import day_shape, diurnal_trace

CURVE = Path(__file__).resolve().parents[2] / "bench" / "data" / "cpu_engine_curve.json"


@pytest.fixture(scope="module")
def trace():
    # A small day (about 300k requests) so the three replays take seconds.
    return diurnal_trace(days=1, seed=7, peak_rps=8, batch_requests_per_day=20_000)


@pytest.fixture(scope="module")
def plan(trace):
    return run_plan(trace, load_curve(CURVE), PlanInputs())


def test_the_synthetic_day_has_its_peaks_and_its_overnight_batch(trace):
    by_hour = [0] * 24
    for r in trace:
        if r.kind == "interactive":
            by_hour[r.at.hour] += 1
    assert max(range(24), key=by_hour.__getitem__) in (9, 10, 11)
    assert by_hour[10] > 5 * by_hour[3]
    assert day_shape(10.0, 0.08) == pytest.approx(1.0) and day_shape(3.0, 0.08) < 0.1
    batch = [r for r in trace if r.kind == "batch"]
    assert len(batch) == 20_000 and all(r.at.hour == 1 for r in batch)
    assert all((r.deadline - r.at).total_seconds() == 86400 for r in batch)
    assert diurnal_trace(days=1, seed=7, peak_rps=1, batch_requests_per_day=10) == \
        diurnal_trace(days=1, seed=7, peak_rps=1, batch_requests_per_day=10)


def test_autoscaled_costs_less_than_static_at_equal_slo_attainment(plan, trace):
    s = {x["name"]: x for x in plan["scenarios"]}
    static, auto = s["static"], s["autoscaled"]
    assert plan["inputs"]["static_replicas"] == static_replicas(trace, load_curve(CURVE), PlanInputs()) >= 2
    assert float(auto["cost_usd"]) < float(static["cost_usd"])
    tolerance = plan["inputs"]["attainment_tolerance"]
    assert abs(auto["interactive_attainment"] - static["interactive_attainment"]) <= tolerance
    assert abs(auto["batch_attainment"] - static["batch_attainment"]) <= tolerance
    assert plan["savings"]["autoscaled_vs_static"]["interactive_attainment_equal"] is True
    # The recommender drove it: it changed the count, and every request was served.
    (pool,) = auto["pools"]
    assert pool["changes"] > 2 and pool["served"] == pool["requests"] == len(trace)
    assert auto["idle_share"] < static["idle_share"]


def test_separating_batch_from_interactive_beats_one_shared_pool(plan):
    s = {x["name"]: x for x in plan["scenarios"]}
    shared, separated = s["autoscaled"], s["separated"]
    assert float(separated["cost_usd"]) < float(shared["cost_usd"])
    assert separated["interactive_attainment"] >= shared["interactive_attainment"]
    assert separated["batch_attainment"] == 1.0
    pools = {p["name"]: p for p in separated["pools"]}
    assert pools["interactive"]["served"] == pools["interactive"]["requests"]
    assert pools["batch"]["served"] == pools["batch"]["requests"] == 20_000
    # The batch pool ran flat out on few replicas, not the burst the shared pool scaled to for the same lines.
    assert pools["batch"]["max_ready"] < shared["pools"][0]["max_ready"]
