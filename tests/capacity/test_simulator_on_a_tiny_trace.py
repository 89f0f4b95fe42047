"""The simulator on traces small enough to check by hand: every request served exactly once, queue waits
exact, a started replica paid for from its start and serving only after its warm-up."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from autoscaling.recommender import PoolSLO, ScalingPolicy
from capacity.curves import parse_curve
from capacity.simulate import PoolPlan, Scenario, simulate
from capacity.traces import TraceRequest

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
# One sequence at a time, 100 tokens/s, 0.1 s to the first token: durations are easy sums.
ONE_SLOT = parse_curve({"points": [{"concurrency": 1, "tokens_per_s": 100, "ttft_p50_s": 0.1, "ttft_p95_s": 0.1}]})


def req(seconds: float, kind="interactive", out=100, deadline_h=24) -> TraceRequest:
    at = T0 + timedelta(seconds=seconds)
    return TraceRequest(at=at, kind=kind, model="m", prompt_tokens=10, output_tokens=out,
                        deadline=at + timedelta(hours=deadline_h) if kind == "batch" else None)


def static(replicas: int, serves=("interactive", "batch")) -> Scenario:
    return Scenario("static", "static", (PoolPlan(name="p", kind="interactive", serves=serves, replicas=replicas,
                                                  usd_per_replica_hour=Decimal("2.00"),
                                                  slo=PoolSLO(ttft_p95_s=1.0)),))


def test_every_request_is_served_once_and_waits_are_exact():
    trace = [req(0), req(0.5), req(1.0), req(3600, kind="batch", out=50), req(7200, kind="embedding")]
    out = simulate(trace, ONE_SLOT, static(1), step_s=30, ttft_slo_s=1.0)
    (pool,) = out.pools
    # The embedding request goes to no generating pool; the four others are each served once.
    assert pool.requests == pool.served == 4
    assert pool.output_tokens == 350
    # One slot: each 100-token request holds it 0.1 + 1.0 s; the second waits 0.6 s, the third 1.2 s.
    assert sorted(round(t, 6) for t in pool.ttfts) == [0.1, 0.7, 1.3]
    assert pool.interactive_met == 2 and out.interactive_attainment == 2 / 3
    assert out.batch_attainment == 1.0
    # Static: paid for the whole day, whatever it did.
    assert pool.replica_seconds == 86400 and pool.cost == Decimal("48.00")


def test_a_batch_line_past_its_deadline_is_not_attained():
    trace = [req(0, kind="batch", out=1000), req(1, kind="batch", out=1000, deadline_h=0.0025)]  # due at 10 s
    out = simulate(trace, ONE_SLOT, static(1), step_s=30, ttft_slo_s=1.0)
    # The second starts when the first is done (10.1 s) and so misses its 10-second deadline.
    assert out.pools[0].served == 2 and out.batch_attainment == 0.5


def test_a_started_replica_costs_from_its_start_and_serves_after_its_warm_up():
    policy = ScalingPolicy(min_replicas=0, max_replicas=1, warmup_s=120, scale_down_cooldown_s=300)
    scenario = Scenario("autoscaled", "autoscaled", (PoolPlan(
        name="p", kind="interactive", serves=("interactive",), replicas=0, usd_per_replica_hour=Decimal("3.60"),
        slo=PoolSLO(ttft_p95_s=1.0), policy=policy),))
    out = simulate([req(5)], ONE_SLOT, scenario, step_s=30, ttft_slo_s=1.0)
    (pool,) = out.pools
    assert pool.served == 1 and pool.started_replicas == 1
    # Nothing ran at first: the request waited through the step it arrived in and the warm-up
    # (started at 30 s, ready at 150 s), then took 1.1 s.
    assert pool.ttfts[0] == 150 - 5 + 0.1
    assert out.interactive_attainment == 0
    # Paid from 30 s: the warm-up is paid, the replica stays until the scale-down after a quiet cooldown.
    ready_at = [t for t, ready, paid, *_ in pool.timeline if ready][0]
    paid_from = [t for t, ready, paid, *_ in pool.timeline if paid][0]
    assert paid_from == 30 and ready_at == 150
    assert pool.replica_seconds >= 120 + 300
    assert pool.replica_seconds < 86400  # and scaled back to zero
    assert pool.cost == (Decimal(str(pool.replica_seconds)) / 3600 * Decimal("3.60")).quantize(Decimal("0.01"))


def test_more_sequences_at_once_run_each_slower_as_the_curve_says():
    curve = parse_curve({"points": [{"concurrency": 1, "tokens_per_s": 100, "ttft_p50_s": 0.0},
                                    {"concurrency": 2, "tokens_per_s": 150, "ttft_p50_s": 0.0}]})
    out = simulate([req(0, out=150), req(0, out=150)], curve, static(1), step_s=30, ttft_slo_s=1.0)
    (pool,) = out.pools
    # Both run at once on two slots; the second joins at concurrency 2 (75 tokens/s each): done at 2 s.
    assert pool.served == 2 and pool.ttfts == [0.0, 0.0]
    assert out.idle_share == 1 - 300 / (86400 * 150)


def test_a_request_never_served_counts_against_attainment():
    # No replica at all: nothing is served, and the requests still count (as misses), not vanish.
    out = simulate([req(0), req(1, kind="batch")], ONE_SLOT, static(0), step_s=30, ttft_slo_s=1.0, horizon_s=600)
    (pool,) = out.pools
    assert pool.requests == 2 and pool.served == 0
    assert out.interactive_attainment == 0 and out.batch_attainment == 0
