"""How many replicas a pool should have: a pure function of its signals, its SLO and its policy.

No Django, no I/O: the periodic task (``autoscaling.services``) and the capacity planner replay signals
through :func:`recommend` and keep the returned :class:`RecommenderState` for the next call.

The rule, in order (each step's outcome goes into ``Decision.reason`` in plain words):

1. **Capacity already coming.** Replicas ordered by an earlier scale-up and not yet warm
   (``state.warming``: the time each is expected ready, ``at + policy.warmup_s``) count as capacity:
   ``effective = signals.replicas + warming``. A warm-up that has passed drops out (the replica came up,
   or it never will and the next decision may order it again).
2. **Load in replicas.** ``occupancy`` = the replicas the current work fills: the larger of
   ``busy_share x replicas`` and ``(running + waiting) / capacity_per_replica``, plus the admission queue
   ``queue_depth / capacity_per_replica`` (without a known per-replica capacity the queue is counted
   relative to what runs: ``occupancy x (1 + queue_depth / running)``). The replicas that load needs at the
   target share is ``ceil(occupancy / target_busy_share)``.
3. **The SLO.** Interactive (``slo.ttft_p95_s``): a p95 time to first token over the SLO asks for one more
   replica than the current count, or proportionally more (``replicas x ttft / slo``), whichever is more;
   the admission queue's p95 wait counts as a lower bound of TTFT when no TTFT was measured. The TTFT
   measured while replicas warm reflects the capacity before them, so it does not order more then. Batch
   (``slo.completion_window_s``, ``slo.tokens_per_s``): the backlog must be done by its deadline. The time
   left is the nearer of the window and ``signals.backlog_due_s`` (when the earliest-due work must be
   finished; None: unknown, the window alone), times ``policy.deadline_margin`` (aim to be done with a
   fifth of it to spare, by default); if the pace that needs is more than the replicas ready and warming
   give, a replica ordered now serves only ``policy.warmup_s`` later, so the warm-up comes off the time
   left first. The pool needs ``backlog_tokens / time left`` tokens a second (and at least
   ``slo.tokens_per_s`` while there is work), divided by one replica's throughput at the target share
   (``policy.replica_tokens_per_s``, else measured: ``tokens_per_s / (replicas x busy_share)``). Why the
   deadline and not the window alone: re-evaluated every step with the full window, ``backlog / window``
   shrinks as the backlog does (an exponential decay, ``e^-1`` of the work still left after one window),
   while the time to the deadline shrinks too and keeps the pace up until the work is done.
   Work already due is sized as if it had a minute left: in practice every replica the policy allows.
4. **Hysteresis.** Scale up only when the load is past the target by the band
   (``occupancy / effective > target x (1 + hysteresis)``) or the SLO is broken; scale down only when
   it is under the target by the band (``occupancy / replicas < target x (1 - hysteresis)``) and the SLO
   has room (TTFT p95 under ``slo x (1 - hysteresis)``). Between the two edges the count holds, so noise
   around the target never flaps it. A scale-down lands at ``ceil(occupancy / target)``, inside the band.
5. **Cooldowns.** No scale-up within ``scale_up_cooldown_s`` of the last one. A scale-down needs the load
   to have stayed low for ``scale_down_cooldown_s`` without a break and no change within that time; it
   goes to the largest count the load needed during that low stretch (a stabilization window, like the
   Kubernetes HPA's), never below what the SLO needs now, and at most ``max_step_down`` at a time
   (None: in one step). Nothing
   is scaled down while replicas warm.
6. **Running above the desired count** (a scale-down still terminating, a manual scale): when the load
   is past the band for the desired count, the desired count rises to what it needs, up to what runs
   (nothing is ordered, so no cooldown).
7. **Steps and bounds.** A scale-up adds at most ``max_step_up`` replicas at a time; the result is clamped
   to ``[min_replicas, max_replicas]`` (a count outside them is corrected at once, whatever the cooldown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class PoolSignals:
    """One pool's state at one moment, combined across web processes and replicas.

    ``busy_share``: the share of the pool's serving capacity in use (0..1; slots held over slots, or the
    engines' busy time). ``queue_depth`` / ``queue_wait_p95_s``: the gateway's admission queue.
    ``running`` / ``waiting``: sequences inside the engines. ``kv_cache_usage``: 0..1, the fullest replica.
    """

    pool: str
    kind: str  # interactive | batch | embedding
    at: datetime
    replicas: int
    queue_depth: int
    queue_wait_p95_s: float
    running: int
    waiting: int
    kv_cache_usage: float
    tokens_per_s: float
    requests_per_s: float
    ttft_p95_s: float | None
    busy_share: float
    capacity_per_replica: int = 0  # requests one replica runs at once (0: unknown)
    backlog_tokens: int = 0  # tokens of work accepted and not yet generated (batch pools)
    backlog_due_s: float | None = None  # seconds until the earliest-due backlog must be done (None: unknown)
    engine_busy_share: float = 0.0  # share of wall time the engines spent in forward steps (shown, not used)


@dataclass(frozen=True)
class PoolSLO:
    ttft_p95_s: float | None = None  # interactive: p95 time to first token, seconds
    tokens_per_s: float | None = None  # batch: throughput while there is work
    completion_window_s: float | None = None  # batch: the backlog must finish within this


@dataclass(frozen=True)
class ScalingPolicy:
    min_replicas: int
    max_replicas: int
    target_busy_share: float = 0.7
    scale_up_cooldown_s: float = 60.0
    scale_down_cooldown_s: float = 600.0
    warmup_s: float = 180.0  # a GPU replica's start: pull, load weights, warm the engine
    hysteresis: float = 0.15
    max_step_up: int = 4
    max_step_down: int | None = None  # None: straight to the stabilized need, like the HPA
    replica_tokens_per_s: float | None = None  # one replica's throughput when known (batch sizing)
    deadline_margin: float = 0.8  # batch: aim to finish the backlog within this share of the time left

    def __post_init__(self):
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not 0 < self.target_busy_share <= 1:
            raise ValueError("target_busy_share must be in (0, 1]")
        if not 0 <= self.hysteresis < 1:
            raise ValueError("hysteresis must be in [0, 1)")
        if not 0 < self.deadline_margin <= 1:
            raise ValueError("deadline_margin must be in (0, 1]")
        if self.max_step_up < 1 or (self.max_step_down is not None and self.max_step_down < 1):
            raise ValueError("max_step_up and max_step_down must be at least 1")


@dataclass(frozen=True)
class RecommenderState:
    desired: int
    last_up_at: datetime | None = None
    last_down_at: datetime | None = None
    warming: tuple[datetime, ...] = ()  # when each ordered, not yet warm replica is expected ready
    low_since: datetime | None = None  # the load has been under the band since then (no break)
    low_peak: int = 0  # the most replicas the load needed since low_since


@dataclass(frozen=True)
class Decision:
    pool: str
    at: datetime
    current: int  # replicas ready now (signals.replicas)
    desired: int
    changed: bool  # desired differs from the previous decision's
    reason: str
    previous: int = 0  # the previous decision's desired count
    needed: int = 0  # what load and SLO alone ask for, before cooldowns, steps and bounds
    warming: int = 0  # replicas counted as coming capacity


@dataclass(frozen=True)
class _Need:
    replicas: int
    occupancy: float
    slo_broken: bool
    slo_room: bool
    words: tuple[str, ...] = field(default=())


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 10 else f"{x:.0f}"


def _occupancy(s: PoolSignals) -> tuple[float, list[str]]:
    words: list[str] = []
    cap = s.capacity_per_replica
    occ = max(0.0, s.busy_share) * s.replicas
    if cap > 0:
        occ = max(occ, (s.running + s.waiting) / cap)
        if s.queue_depth:
            occ += s.queue_depth / cap
            words.append(f"queue {s.queue_depth} = {_fmt(s.queue_depth / (cap * max(1, s.replicas)))}x capacity")
    elif s.queue_depth:
        occ *= 1 + s.queue_depth / max(1, s.running)
        words.append(f"queue {s.queue_depth}")
    if occ == 0 and (s.queue_depth or s.waiting):
        occ = 1e-3  # work waits and nothing serves it (scaled to zero): one replica at least
    return occ, words


# Work already due (or overdue) is sized as if it had this long: every replica the policy allows, not a
# division by zero.
_MIN_TIME_LEFT_S = 60.0


def _tokens(n: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{_fmt(n / size)}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{_fmt(seconds / 3600)} h"
    if seconds >= 60:
        return f"{_fmt(seconds / 60)} min"
    return f"{_fmt(seconds)} s"


def _batch_pace(s: PoolSignals, slo: PoolSLO, policy: ScalingPolicy, warming: int,
                per_replica: float | None) -> tuple[float, str]:
    """Tokens a second that finish the backlog by its deadline (module docstring, step 3), and its words."""
    due = [t for t in (slo.completion_window_s, s.backlog_due_s) if t is not None]
    if not s.backlog_tokens or not due:
        return 0.0, ""
    due_s = min(due)
    left = max(_MIN_TIME_LEFT_S, policy.deadline_margin * due_s)
    required = s.backlog_tokens / left
    if per_replica and required > (s.replicas + warming) * per_replica * policy.target_busy_share:
        # More replicas are needed; one ordered now works only after its warm-up.
        left = max(_MIN_TIME_LEFT_S, left - policy.warmup_s)
        required = s.backlog_tokens / left
    when = f"due in {_duration(due_s)}" if due_s > 0 else f"overdue by {_duration(-due_s)}"
    return required, f"{_tokens(s.backlog_tokens)} tokens {when}"


def _replicas_for_slo(s: PoolSignals, slo: PoolSLO, policy: ScalingPolicy,
                      warming: int) -> tuple[int, bool, bool, list[str]]:
    """Replicas the SLO needs, whether it is broken, whether it has room for fewer replicas, and words."""
    words: list[str] = []
    need, broken, room = 0, False, True
    band = policy.hysteresis
    if slo.ttft_p95_s:
        ttft = s.ttft_p95_s if s.ttft_p95_s is not None else (s.queue_wait_p95_s or None)
        if ttft is not None:
            label = "TTFT p95" if s.ttft_p95_s is not None else "queue wait p95"
            if ttft > slo.ttft_p95_s:
                room = False
                if warming:
                    words.append(f"{label} {_fmt(ttft)} s over SLO {_fmt(slo.ttft_p95_s)} s, "
                                 f"{warming} replica(s) warming")
                else:
                    broken = True
                    need = max(s.replicas + 1, math.ceil(s.replicas * ttft / slo.ttft_p95_s))
                    words.append(f"{label} {_fmt(ttft)} s over SLO {_fmt(slo.ttft_p95_s)} s")
            elif ttft > slo.ttft_p95_s * (1 - band):
                room = False
                words.append(f"{label} {_fmt(ttft)} s near SLO {_fmt(slo.ttft_p95_s)} s")
    # Lines with a deadline (backlog_due_s) are sized by it even where the pool's SLO names no window.
    if slo.completion_window_s or slo.tokens_per_s or (s.backlog_due_s is not None and s.backlog_tokens):
        per_replica = policy.replica_tokens_per_s
        if not per_replica and s.replicas and s.busy_share >= 0.05 and s.tokens_per_s > 0:
            per_replica = s.tokens_per_s / (s.replicas * min(1.0, s.busy_share))
        required, deadline_words = _batch_pace(s, slo, policy, warming, per_replica)
        has_work = s.backlog_tokens or s.queue_depth or s.running or s.waiting
        if slo.tokens_per_s and has_work and slo.tokens_per_s > required:
            required, deadline_words = slo.tokens_per_s, f"SLO {_fmt(slo.tokens_per_s)} tok/s while there is work"
        if required and per_replica:
            # At the target share, not flat out: the same headroom as the utilization rule.
            need = max(need, math.ceil(required / (per_replica * policy.target_busy_share)))
            words.append(f"batch: {deadline_words} needs {_fmt(required)} tok/s, one replica {_fmt(per_replica)} tok/s")
            if s.tokens_per_s < required:
                broken = broken or need > s.replicas + warming
    return need, broken, room, words


def _need(s: PoolSignals, slo: PoolSLO, policy: ScalingPolicy, warming: int) -> _Need:
    occ, words = _occupancy(s)
    by_load = math.ceil(occ / policy.target_busy_share - 1e-9) if occ > 0 else 0
    by_slo, broken, room, slo_words = _replicas_for_slo(s, slo, policy, warming)
    return _Need(replicas=max(by_load, by_slo), occupancy=occ, slo_broken=broken, slo_room=room,
                 words=tuple(words + slo_words))


def _since(at: datetime, then: datetime | None) -> float:
    return math.inf if then is None else (at - then).total_seconds()


def recommend(signals: PoolSignals, slo: PoolSLO, policy: ScalingPolicy,
              state: RecommenderState | None) -> tuple[Decision, RecommenderState]:
    """The desired replica count for ``signals.pool`` now, and the state to pass to the next call."""
    at = signals.at
    if state is None:
        state = RecommenderState(desired=signals.replicas)
    previous = state.desired
    # Warm-ups still running; no more of them than the replicas ordered and not yet ready.
    still = sorted(t for t in state.warming if t > at)
    still = still[len(still) - min(len(still), max(0, previous - signals.replicas)):]
    warming = len(still)
    effective = signals.replicas + warming
    need = _need(signals, slo, policy, warming)
    target = policy.target_busy_share
    band = policy.hysteresis
    words = list(need.words)
    util_now = need.occupancy / effective if effective else (math.inf if need.occupancy else 0.0)
    words.insert(0, f"load {_fmt(need.occupancy)} replica(s) on {effective}"
                    + (f" ({signals.replicas} ready + {warming} warming)" if warming else "")
                    + f", target {_fmt(target)}")

    def done(desired: int, action: str, **changes) -> tuple[Decision, RecommenderState]:
        desired = min(policy.max_replicas, max(policy.min_replicas, desired))
        changed = desired != previous
        if not changed and action not in ("hold",):
            action = "hold"
        new_warming = tuple(still)
        if desired > previous:
            added = desired - max(previous, effective)
            new_warming = tuple(sorted(still + [at + timedelta(seconds=policy.warmup_s)] * max(0, added)))
            changes.setdefault("last_up_at", at)
            changes.update(low_since=None, low_peak=0)
        elif desired < previous:
            changes.setdefault("last_down_at", at)
            changes.update(low_since=None, low_peak=0)
            new_warming = new_warming[:max(0, desired - signals.replicas)]
        reason = f"{action}: " + "; ".join(words)
        new_state = replace(state, desired=desired, warming=new_warming, **changes)
        decision = Decision(pool=signals.pool, at=at, current=signals.replicas, desired=desired, changed=changed,
                            reason=reason, previous=previous, needed=need.replicas, warming=warming)
        return decision, new_state

    # Out of bounds (the policy changed): correct at once.
    if previous > policy.max_replicas:
        words.append(f"above max {policy.max_replicas}")
        return done(policy.max_replicas, "down")
    if previous < policy.min_replicas:
        words.append(f"below min {policy.min_replicas}")
        return done(policy.min_replicas, "up")

    overloaded = util_now > target * (1 + band) and need.replicas > effective
    if overloaded or need.slo_broken:
        wanted = max(need.replicas, effective + 1 if need.slo_broken else 0)
        if _since(at, state.last_up_at) < policy.scale_up_cooldown_s:
            left = policy.scale_up_cooldown_s - _since(at, state.last_up_at)
            words.append(f"scale-up cooldown ({_fmt(left)} s left)")
            return done(previous, "hold", low_since=None, low_peak=0)
        step = min(wanted, effective + policy.max_step_up)
        if step > policy.max_replicas:
            words.append(f"at max {policy.max_replicas}")
        if step <= previous:
            words.append(f"{previous} already ordered")
            return done(previous, "hold", low_since=None, low_peak=0)
        if wanted > step:
            words.append(f"needs {wanted}, step {policy.max_step_up}")
        return done(step, "up")

    if (previous < effective and need.replicas > previous
            and need.occupancy / max(1, previous) > target * (1 + band)):
        # More replicas run than were asked for (a scale-down still terminating, or a manual scale) and the
        # load, past the band, needs some of them: keep those. Nothing new is ordered: no cooldown applies.
        keep = min(need.replicas, effective)
        words.append(f"needs {keep} of the {effective} running")
        return done(keep, "up")

    underloaded = (effective > 0 and need.occupancy / max(1, signals.replicas) < target * (1 - band)
                   and need.replicas < previous and warming == 0)
    if not underloaded:
        return done(previous, "hold", low_since=None, low_peak=0)
    low_since = state.low_since or at
    low_peak = max(state.low_peak, need.replicas)
    floor = max(need.replicas, policy.min_replicas)
    if not need.slo_room:
        words.append("SLO has no room for fewer")
        return done(previous, "hold", low_since=None, low_peak=0)
    low_for = (at - low_since).total_seconds()
    since_change = min(_since(at, state.last_up_at), _since(at, state.last_down_at))
    if low_for < policy.scale_down_cooldown_s or since_change < policy.scale_down_cooldown_s:
        left = policy.scale_down_cooldown_s - min(low_for, since_change)
        words.append(f"under target; scale-down cooldown ({_fmt(left)} s left)")
        return done(previous, "hold", low_since=low_since, low_peak=low_peak)
    lower = max(low_peak, floor, previous - (policy.max_step_down or previous))
    if lower >= previous:
        words.append(f"peak need {low_peak} in the last {_fmt(policy.scale_down_cooldown_s)} s")
        return done(previous, "hold", low_since=low_since, low_peak=low_peak)
    words.append(f"low for {_fmt(low_for)} s")
    return done(lower, "down")
