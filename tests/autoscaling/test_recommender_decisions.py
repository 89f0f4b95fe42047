"""The recommender on scripted signal sequences (issue 13): up on queue growth, no flapping, down only after
the cooldown, never below what the SLO needs, warm-up counted as coming capacity, bounds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from autoscaling.recommender import PoolSignals, PoolSLO, RecommenderState, ScalingPolicy, recommend

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SLO = PoolSLO(ttft_p95_s=1.0)
POLICY = ScalingPolicy(min_replicas=1, max_replicas=8, target_busy_share=0.7, scale_up_cooldown_s=60,
                       scale_down_cooldown_s=300, warmup_s=120, hysteresis=0.15, max_step_up=2)


def signals(second: float, replicas: int, *, busy: float, queue: int = 0, ttft: float | None = 0.3,
            kind: str = "interactive", **more) -> PoolSignals:
    return PoolSignals(pool="interactive", kind=kind, at=T0 + timedelta(seconds=second), replicas=replicas,
                       queue_depth=queue, queue_wait_p95_s=0.0, running=round(busy * replicas * 32), waiting=0,
                       kv_cache_usage=busy, tokens_per_s=500.0 * busy * replicas, requests_per_s=10.0 * busy,
                       ttft_p95_s=ttft, busy_share=busy, capacity_per_replica=32, **more)


def run(script, policy=POLICY, slo=SLO, state=None):
    decisions = []
    for s in script:
        decision, state = recommend(s, slo, policy, state)
        decisions.append(decision)
    return decisions, state


def test_growing_queue_scales_up_and_says_why():
    # At the target share, TTFT well inside the SLO: only the queue's growth can ask for more.
    script = [signals(15 * i, 2, busy=0.7, queue=10 * i, ttft=0.5) for i in range(4)]
    decisions, state = run(script)
    assert not decisions[0].changed
    ups = [d for d in decisions if d.changed]
    assert ups and ups[0].desired > 2
    assert ups[0].reason.startswith("up:") and "queue" in ups[0].reason
    assert state.desired == ups[-1].desired


def test_ttft_over_slo_alone_scales_up():
    decision, _ = recommend(signals(0, 3, busy=0.6, ttft=2.5), SLO, POLICY, None)
    assert decision.changed and decision.desired > 3
    assert "TTFT p95 2.5 s over SLO 1 s" in decision.reason


def test_noise_inside_the_band_never_changes_the_count():
    # Busy share wobbling around the 0.7 target, within the 15 % band: 4 replicas hold for an hour.
    wobble = [0.64, 0.76, 0.70, 0.79, 0.62, 0.73, 0.67, 0.78]
    script = [signals(15 * i, 4, busy=wobble[i % len(wobble)], ttft=0.4) for i in range(240)]
    decisions, state = run(script, state=RecommenderState(desired=4))
    assert not [d for d in decisions if d.changed]
    assert state.desired == 4


def test_spike_then_quiet_does_not_flap():
    # One sample of a spike orders replicas; the quiet right after never takes them back before the cooldown.
    script = [signals(0, 2, busy=1.0, queue=80, ttft=3.0)]
    script += [signals(15 * i, 2, busy=0.1) for i in range(1, 19)]  # 270 s of quiet, < 300 s
    decisions, _ = run(script)
    assert decisions[0].changed
    assert all(not d.changed for d in decisions[1:])


def test_scale_down_only_after_the_cooldown_of_continuously_low_load():
    state = RecommenderState(desired=6)
    low = [signals(15 * i, 6, busy=0.1) for i in range(0, 30)]
    decisions, state = run(low, state=state)
    first_down = next(d for d in decisions if d.changed)
    assert (first_down.at - T0).total_seconds() >= POLICY.scale_down_cooldown_s
    assert first_down.desired < 6 and first_down.reason.startswith("down:")
    assert all(not d.changed for d in decisions if (d.at - T0).total_seconds() < POLICY.scale_down_cooldown_s)


def test_a_busy_sample_restarts_the_scale_down_cooldown():
    script = [signals(15 * i, 6, busy=0.1) for i in range(0, 15)]  # 210 s low
    script += [signals(225, 6, busy=0.7)]  # back at target once
    script += [signals(240 + 15 * i, 6, busy=0.1) for i in range(0, 19)]  # another 270 s low
    decisions, _ = run(script, state=RecommenderState(desired=6))
    assert not [d for d in decisions if d.changed]


def test_scale_down_never_below_what_the_ttft_slo_needs():
    # Busy share says 2 replicas would do, but TTFT p95 sits just under the SLO: no scale-down, ever.
    script = [signals(15 * i, 5, busy=0.2, ttft=0.95) for i in range(100)]
    decisions, state = run(script, state=RecommenderState(desired=5))
    assert not [d for d in decisions if d.changed]
    assert "near SLO" in decisions[-1].reason and state.desired == 5


def test_scale_down_lands_where_the_load_stays_under_target():
    script = [signals(15 * i, 8, busy=0.2) for i in range(40)]  # 1.6 replicas busy -> ceil(1.6 / 0.7) = 3
    decisions, state = run(script, state=RecommenderState(desired=8))
    assert state.desired == 3
    # the new count carries the same load at or under the target share
    assert 0.2 * 8 / state.desired <= POLICY.target_busy_share


def test_batch_backlog_needs_the_replicas_to_finish_within_the_window():
    slo = PoolSLO(completion_window_s=3600)
    policy = replace(POLICY, replica_tokens_per_s=1000.0, max_step_up=8, max_replicas=20)
    # 36M tokens due in an hour, aimed at 80 % of it less the 120 s warm-up of a new replica: 36M / 2760 s =
    # 13 043 tok/s; one replica does 1 000 at full speed, 700 at the target share.
    s = replace(signals(0, 2, busy=0.5, ttft=None, kind="batch"), backlog_tokens=36_000_000)
    decision, _ = recommend(s, slo, policy, None)
    assert decision.desired == 10  # step limit: 2 + 8
    assert decision.needed == 19 and "batch: 36M tokens due in 1 h needs 13043 tok/s" in decision.reason


def test_batch_backlog_keeps_replicas_that_the_window_needs():
    slo = PoolSLO(completion_window_s=3600)
    policy = replace(POLICY, replica_tokens_per_s=1000.0, max_replicas=20)
    script = [replace(signals(15 * i, 6, busy=0.1, ttft=None, kind="batch"), backlog_tokens=11_000_000)
              for i in range(60)]  # 11M / (0.8 x 3600 s) = 3819 tok/s: ceil(3819 / 700) = 6
    decisions, state = run(script, slo=slo, policy=policy, state=RecommenderState(desired=6))
    assert state.desired == 6 and not [d for d in decisions if d.changed]


def test_warming_replicas_count_as_coming_capacity():
    first, state = recommend(signals(0, 2, busy=1.0, queue=20, ttft=2.0), SLO, POLICY, None)
    assert first.desired == 4 and len(state.warming) == 2
    # The same overload while they warm (TTFT still reflects 2 replicas): nothing more is ordered.
    later = [signals(15 * i, 2, busy=1.0, queue=20, ttft=2.0) for i in range(5, 8)]  # past the up cooldown
    decisions, state = run(later, state=state)
    assert all(not d.changed for d in decisions)
    assert all(d.warming == 2 for d in decisions) and "warming" in decisions[-1].reason


def test_replicas_not_up_after_the_warm_up_are_not_counted_but_not_reordered_twice():
    _, state = recommend(signals(0, 2, busy=1.0, queue=20, ttft=2.0), SLO, POLICY, None)
    decision, state = recommend(signals(130, 2, busy=1.0, queue=20, ttft=2.0), SLO, POLICY, state)
    assert decision.warming == 0  # the warm-up is over: no longer coming capacity
    assert decision.desired >= 4


def test_bounds_clamp_in_both_directions():
    policy = replace(POLICY, max_replicas=3, max_step_up=8)
    decision, _ = recommend(signals(0, 2, busy=1.0, queue=200, ttft=5.0), SLO, policy, None)
    assert decision.desired == 3
    policy = replace(POLICY, min_replicas=2)
    decisions, state = run([signals(15 * i, 4, busy=0.0, ttft=None) for i in range(60)], policy=policy,
                           state=RecommenderState(desired=4))
    assert state.desired == 2
    decision, _ = recommend(signals(0, 5, busy=0.5), SLO, replace(POLICY, max_replicas=4),
                            RecommenderState(desired=5))
    assert decision.changed and decision.desired == 4


def test_scale_up_cooldown_spaces_orders():
    policy = replace(POLICY, warmup_s=0, max_step_up=1)  # replicas instantly warm: only the cooldown holds
    first, state = recommend(signals(0, 2, busy=1.0, queue=50, ttft=3.0), SLO, policy, None)
    soon, state = recommend(signals(30, 3, busy=1.0, queue=50, ttft=3.0), SLO, policy, state)
    later, state = recommend(signals(61, 3, busy=1.0, queue=50, ttft=3.0), SLO, policy, state)
    assert first.changed and not soon.changed and "cooldown" in soon.reason and later.changed


def test_replicas_still_running_above_the_desired_count_are_kept_when_the_load_needs_them():
    # Desired went down to 3; 6 still run (terminating) when the load comes back to 4.2 replicas' worth.
    decision, state = recommend(signals(0, 6, busy=0.7), SLO, POLICY, RecommenderState(desired=3))
    assert decision.changed and decision.desired == 6 and not state.warming
    assert "needs 6 of the 6 running" in decision.reason


@pytest.mark.parametrize("bad", [dict(min_replicas=3, max_replicas=2), dict(target_busy_share=0),
                                 dict(hysteresis=1.0), dict(max_step_up=0)])
def test_nonsense_policies_are_refused(bad):
    with pytest.raises(ValueError):
        replace(POLICY, **bad)
