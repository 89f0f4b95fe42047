"""The planner's batch pool is paced by its lines' deadlines (issue 13, follow-up): the simulator passes the
earliest deadline of the waiting lines to the recommender as ``backlog_due_s``, and the pool's SLO keeps the
24 h window it was given."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from autoscaling.recommender import PoolSLO, ScalingPolicy
from capacity.curves import parse_curve
from capacity.simulate import PoolPlan, Scenario, simulate
from capacity.traces import TraceRequest

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
# One sequence at a time, 100 tokens/s: a 1 000-token line holds a replica 10 s.
ONE_SLOT = parse_curve({"points": [{"concurrency": 1, "tokens_per_s": 100, "ttft_p50_s": 0.1, "ttft_p95_s": 0.1}]})


def test_lines_due_sooner_than_the_window_are_done_by_their_deadline():
    # 1 000 lines of 1 000 tokens, due 2 h after they arrive. Paced by the 24 h window alone the pool would
    # need 1M / (0.8 x 86 400 s) = 14 tok/s, one replica, and take 10 000 s: 30.8 % of the lines late. By the
    # deadline: 1M / (0.8 x 7 200 - 180 s) = 179 tok/s, two replicas, done in about 5 000 s.
    trace = [TraceRequest(at=T0 + timedelta(seconds=i / 100), kind="batch", model="m", prompt_tokens=10,
                          output_tokens=1000, deadline=T0 + timedelta(seconds=i / 100, hours=2))
             for i in range(1000)]
    policy = ScalingPolicy(min_replicas=0, max_replicas=8, target_busy_share=1.0, warmup_s=180,
                           replica_tokens_per_s=ONE_SLOT.peak_tokens_per_s)
    scenario = Scenario("batch", "batch", (PoolPlan(
        name="batch", kind="batch", serves=("batch",), replicas=0, usd_per_replica_hour=Decimal("2.00"),
        slo=PoolSLO(completion_window_s=24 * 3600.0), policy=policy),))
    out = simulate(trace, ONE_SLOT, scenario, step_s=30, ttft_slo_s=1.0)
    (pool,) = out.pools
    assert pool.served == 1000
    assert out.batch_attainment == 1.0
    assert max(ready for _, ready, _, _, _ in pool.timeline) >= 2
    assert "1M tokens due in 1.99 h" in pool.reasons[0][2]
