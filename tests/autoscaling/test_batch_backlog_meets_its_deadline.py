"""A batch pool's backlog is paced by its deadline (issue 13, follow-up): replayed through a tiny simulation
(replicas drain at a fixed rate, a replica ordered serves only after its warm-up), a big backlog due in W is
done within W, the replicas stay while it needs them, and the pool goes back to its minimum once it is empty
and the cooldown has passed.

The numbers, for 300M tokens due in 3 h, the Batch API's 24 h window as the SLO, 1 000 tok/s a replica,
starting from one replica:

* the old rule (``backlog / completion_window_s``, the deadline unknown) asks for 300M / 86 400 s = 3 472
  tok/s, 4 replicas, and is done after 75 120 s (20.9 h): 18 h late;
* with the 24 h window itself as the deadline, re-evaluated every step, it asks for 27 778 tok/s, 28
  replicas, and is still 3.6M tokens short at 3 h (done at 10 950 s): the replicas ordered wait out their
  warm-up while the clock runs;
* paced by ``backlog_due_s`` with the 0.8 margin and the warm-up: 300M / (0.8 x 10 800 - 120 s) = 35 211
  tok/s, 36 replicas, done at 8 580 s (2.4 h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from autoscaling.recommender import Decision, PoolSignals, PoolSLO, ScalingPolicy, recommend

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PER_REPLICA = 1000.0  # tok/s one replica generates flat out
STEP_S = 30.0
DUE_S = 3 * 3600.0
BACKLOG = 300_000_000
# The planner's batch pool: flat out is the target (a batch pool has no latency to protect).
POLICY = ScalingPolicy(min_replicas=1, max_replicas=60, target_busy_share=1.0, scale_up_cooldown_s=60,
                       scale_down_cooldown_s=300, warmup_s=120, max_step_up=8, replica_tokens_per_s=PER_REPLICA)
SLO = PoolSLO(completion_window_s=24 * 3600.0)


@dataclass
class Replay:
    finished_at: float | None = None
    left_at_due: float | None = None
    # (t, replicas ready, backlog after the step, decision) per step
    steps: list[tuple[float, int, float, Decision]] = field(default_factory=list)


def replay(backlog: float, *, due_s: float | None, until_s: float, slo: PoolSLO = SLO,
           policy: ScalingPolicy = POLICY) -> Replay:
    """Each step the ready replicas drain `ready x PER_REPLICA x STEP_S` tokens, then the recommender sees the
    step's signals and its desired count is applied: new replicas are ready a warm-up later, a lower count
    drops warming replicas first."""
    out = Replay()
    t, ready, warming, state = 0.0, 1, [], None
    while t < until_s:
        drained = min(backlog, ready * PER_REPLICA * STEP_S)
        backlog -= drained
        t += STEP_S
        if backlog == 0 and out.finished_at is None:
            out.finished_at = t
        if out.left_at_due is None and t >= DUE_S:
            out.left_at_due = backlog
        ready += sum(1 for w in warming if w <= t)
        warming = [w for w in warming if w > t]
        signals = PoolSignals(
            pool="batch", kind="batch", at=T0 + timedelta(seconds=t), replicas=ready, queue_depth=0,
            queue_wait_p95_s=0.0, running=ready * 32 if backlog else 0, waiting=0, kv_cache_usage=0.0,
            tokens_per_s=drained / STEP_S, requests_per_s=0.0, ttft_p95_s=None,
            busy_share=drained / (ready * PER_REPLICA * STEP_S) if ready else 0.0, capacity_per_replica=32,
            backlog_tokens=int(backlog), backlog_due_s=(due_s - t) if due_s is not None and backlog else None)
        decision, state = recommend(signals, slo, policy, state)
        live = ready + len(warming)
        if decision.desired > live:
            warming += [t + math.ceil(policy.warmup_s / STEP_S) * STEP_S] * (decision.desired - live)
        elif decision.desired < live:
            cut = live - decision.desired
            dropped = min(cut, len(warming))
            warming = warming[:len(warming) - dropped]
            ready -= cut - dropped
        out.steps.append((t, ready, backlog, decision))
    return out


def test_a_big_backlog_due_in_three_hours_is_done_within_them():
    run = replay(BACKLOG, due_s=DUE_S, until_s=DUE_S)
    assert run.finished_at is not None and run.finished_at <= DUE_S, run.left_at_due
    # Aimed at 80 % of the time left, so with room to spare rather than at the last step.
    assert run.finished_at <= 0.85 * DUE_S
    first = run.steps[0][3]
    assert first.desired > 1 and "batch: 300M tokens due in 2.99 h needs" in first.reason


def test_the_window_alone_does_not_finish_work_due_sooner():
    # The same backlog without its due time: the 24 h window paces it, and 3 h later most of it is left.
    run = replay(BACKLOG, due_s=None, until_s=DUE_S)
    assert run.finished_at is None and run.left_at_due > BACKLOG / 2


def test_no_scale_down_while_the_backlog_needs_the_replicas():
    run = replay(BACKLOG, due_s=DUE_S, until_s=DUE_S)
    working = [(t, d) for t, _, left, d in run.steps if left > 0]
    assert len(working) > 100
    downs = [(t, d.reason) for t, d in working if d.desired < d.previous]
    assert not downs
    # The count it reached holds to the end of the work (the deadline keeps the pace up as both shrink).
    peak = max(d.desired for _, d in working)
    assert working[-1][1].desired == peak


def test_an_empty_pool_goes_back_to_its_minimum_after_the_cooldown():
    run = replay(BACKLOG, due_s=DUE_S, until_s=DUE_S + 3600)
    assert run.finished_at is not None
    after = [(t, ready, d) for t, ready, _, d in run.steps if t > run.finished_at]
    downs = [(t, d) for t, _, d in after if d.desired < d.previous]
    assert downs, "never scaled down once empty"
    first_down_at = downs[0][0]
    assert first_down_at - run.finished_at >= POLICY.scale_down_cooldown_s
    assert after[-1][2].desired == POLICY.min_replicas and after[-1][1] == POLICY.min_replicas


def test_overdue_work_asks_for_every_replica_the_policy_allows():
    signals = PoolSignals(pool="batch", kind="batch", at=T0, replicas=4, queue_depth=0, queue_wait_p95_s=0.0,
                          running=128, waiting=0, kv_cache_usage=0.0, tokens_per_s=4000.0, requests_per_s=0.0,
                          ttft_p95_s=None, busy_share=1.0, capacity_per_replica=32, backlog_tokens=5_000_000,
                          backlog_due_s=-600.0)
    decision, _ = recommend(signals, SLO, POLICY, None)
    assert decision.needed >= POLICY.max_replicas and "overdue by 10 min" in decision.reason
