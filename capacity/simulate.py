"""Replaying a demand trace through a model of the pools, step by step.

Each pool is a set of replicas, each running up to the curve's ``max_concurrency`` sequences (slots), in
front of one first-come-first-served admission queue, as the gateway's pools are (serving/pools.py). Time
advances in steps of ``step_s``; within a step, arrivals and slot releases are taken in time order, so a
request's wait is exact to the second whatever the step (the step is how often the scaling policy looks).

* A request admitted when the pool runs ``c`` sequences per ready replica (itself included) takes the
  curve's time to first token at ``c``, then its output tokens at the curve's per-sequence speed at ``c``
  (``tokens_per_s(c) / c``). Its speed is fixed when it is admitted (a simplification: a real batch speeds
  up and slows down as others join and leave; the curve is the average of exactly that).
* TTFT = queue wait + the curve's TTFT. Interactive SLO attainment: the share of interactive requests whose
  TTFT is within the SLO. Batch attainment: the share of batch requests finished by their deadline.
* A replica that is started costs from that moment, and serves only ``warmup_s`` later (rounded up to the
  next step). A replica that is stopped takes no new work, finishes what it runs, and costs until then.
* Static pools have their replicas from the first moment to the last. Autoscaled pools are driven by
  :func:`autoscaling.recommender.recommend`, fed the pool's simulated signals at the end of every step:
  the same function, state and policy as the live autoscaler, so the plan evaluates the real recommender.
* Paid capacity not used: ``idle share = 1 - tokens generated / (replica-seconds paid x the curve's peak
  tokens/s)``: the share of the token capacity paid for that did no work (warm-up counts as idle).

The simulation runs until every request is done, and at least to the end of the trace's last whole day;
requests still waiting ``horizon_s`` past the last arrival are counted as never served.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Callable

from autoscaling.recommender import PoolSignals, PoolSLO, RecommenderState, ScalingPolicy, recommend

from .curves import ReplicaCurve
from .traces import TraceRequest

SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True)
class PoolPlan:
    """One pool of a scenario: what it serves, how many replicas, who decides."""

    name: str
    kind: str  # the recommender's kind: interactive | batch
    serves: tuple[str, ...]  # trace kinds sent to it
    replicas: int  # static: the fixed count; autoscaled: replicas ready at the start
    usd_per_replica_hour: Decimal
    slo: PoolSLO
    policy: ScalingPolicy | None = None  # None: static
    gpus_per_replica: int = 1

    @property
    def autoscaled(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    pools: tuple[PoolPlan, ...]


@dataclass
class _Replica:
    started: float
    ready: float
    stopped: float | None = None
    busy_until: float = 0.0


@dataclass
class PoolOutcome:
    name: str
    kind: str
    serves: tuple[str, ...]
    autoscaled: bool
    usd_per_replica_hour: Decimal
    gpus_per_replica: int
    requests: int = 0
    served: int = 0
    output_tokens: int = 0
    replica_seconds: float = 0.0
    interactive: int = 0  # requests of each kind routed here, served or not (attainment's denominators)
    interactive_met: int = 0
    batch: int = 0
    batch_met: int = 0
    ttfts: list[float] = field(default_factory=list)
    decisions: int = 0
    changes: int = 0
    started_replicas: int = 0
    # Per step: (t seconds from the start, replicas ready, replicas paid for, queue depth, tokens/s done).
    timeline: list[tuple[float, int, int, int, float]] = field(default_factory=list)
    reasons: list[tuple[float, int, str]] = field(default_factory=list)  # changes only: (t, desired, why)

    @property
    def replica_hours(self) -> Decimal:
        return Decimal(str(round(self.replica_seconds, 3))) / SECONDS_PER_HOUR

    @property
    def cost(self) -> Decimal:
        return (self.replica_hours * self.usd_per_replica_hour).quantize(Decimal("0.01"))


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class _PoolSim:
    def __init__(self, plan: PoolPlan, curve: ReplicaCurve, requests: list[TraceRequest], start: datetime,
                 step_s: float, ttft_slo_s: float):
        self.plan, self.curve, self.start, self.step_s, self.ttft_slo_s = plan, curve, start, step_s, ttft_slo_s
        self.arrivals = [((r.at - start).total_seconds(), r) for r in requests]
        self.cap = curve.max_concurrency
        self.replicas: dict[int, _Replica] = {}
        self.serving: set[int] = set()  # replicas whose slots are in self.slots
        self.slots: list[tuple[float, int, int]] = []  # (free at, tie-break, replica id) of ready replicas
        self.running: list[float] = []  # finish times of admitted requests (a min-heap)
        self.queue: deque[tuple[float, TraceRequest]] = deque()
        self.next_arrival = 0
        self._seq = 0
        self._next_id = 0
        self.state: RecommenderState | None = None
        self.out = PoolOutcome(plan.name, plan.kind, plan.serves, plan.autoscaled, plan.usd_per_replica_hour,
                               plan.gpus_per_replica, requests=len(requests),
                               interactive=sum(r.kind != "batch" for r in requests),
                               batch=sum(r.kind == "batch" for r in requests))
        for _ in range(plan.replicas):
            self._start_replica(0.0, warm=True)

    # Replicas.
    def _start_replica(self, t: float, warm: bool = False) -> None:
        ready = t if warm else t + math.ceil(self.plan.policy.warmup_s / self.step_s) * self.step_s
        self.replicas[self._next_id] = _Replica(started=t, ready=ready)
        self._next_id += 1
        self.out.started_replicas += 0 if warm else 1

    def _ready_now(self, t: float) -> None:
        """Replicas whose warm-up is over join the slots (once each)."""
        for rid, r in self.replicas.items():
            if r.stopped is None and rid not in self.serving and r.ready <= t:
                self.serving.add(rid)
                for _ in range(self.cap):
                    self._seq += 1
                    heapq.heappush(self.slots, (t, self._seq, rid))

    def _live(self) -> list[tuple[int, _Replica]]:
        return [(rid, r) for rid, r in self.replicas.items() if r.stopped is None]

    def _ready_count(self, t: float) -> int:
        return sum(1 for _, r in self._live() if r.ready <= t)

    def _stop_replicas(self, t: float, count: int) -> None:
        live = self._live()
        # Warming replicas go first (they serve nothing yet), then the newest ready ones.
        live.sort(key=lambda item: (item[1].ready <= t, -item[1].started))
        stopping = {rid for rid, _ in live[:count]}
        for rid in stopping:
            self.replicas[rid].stopped = t
        self.slots = [s for s in self.slots if s[2] not in stopping]
        heapq.heapify(self.slots)

    # One step.
    def _busy(self, t: float) -> int:
        while self.running and self.running[0] <= t:
            heapq.heappop(self.running)
        return len(self.running)

    def step(self, t: float) -> None:
        end = t + self.step_s
        self._ready_now(t)
        ready = self._ready_count(t)
        while self.next_arrival < len(self.arrivals) and self.arrivals[self.next_arrival][0] < end:
            self.queue.append(self.arrivals[self.next_arrival])
            self.next_arrival += 1
        waits: list[float] = []
        ttfts: list[float] = []
        tokens = 0
        curve = self.curve
        while self.queue and self.slots:
            free_at, _, rid = self.slots[0]
            arrived, req = self.queue[0]
            admit = max(free_at, arrived)
            if admit >= end:
                break
            heapq.heappop(self.slots)
            self.queue.popleft()
            c = min(self.cap, (self._busy(admit) + 1) / max(1, ready))
            ttft_inside = curve.ttft_s(c)
            finish = admit + ttft_inside + req.output_tokens * c / curve.tokens_per_s(c)
            self._seq += 1
            heapq.heappush(self.slots, (finish, self._seq, rid))
            heapq.heappush(self.running, finish)
            replica = self.replicas[rid]
            replica.busy_until = max(replica.busy_until, finish)
            waits.append(admit - arrived)
            tokens += req.output_tokens
            self.out.served += 1
            self.out.output_tokens += req.output_tokens
            if req.kind == "batch":
                deadline = (req.deadline - self.start).total_seconds() if req.deadline else math.inf
                self.out.batch_met += finish <= deadline
            else:
                ttft = admit - arrived + ttft_inside
                ttfts.append(ttft)
                self.out.ttfts.append(ttft)
                self.out.interactive_met += ttft <= self.ttft_slo_s
        running = self._busy(end)
        paid = len(self._live())
        self.out.timeline.append((t, ready, paid, len(self.queue), tokens / self.step_s))
        if self.plan.autoscaled:
            self._decide(end, ready, running, waits, ttfts, tokens)

    def _decide(self, end: float, ready: int, running: int, waits: list[float], ttfts: list[float],
                tokens: int) -> None:
        head_age = end - self.queue[0][0] if self.queue else 0.0
        capacity = max(1, ready) * self.cap
        backlog = sum(r.output_tokens for _, r in self.queue)
        due_s = None
        if self.plan.kind == "batch":
            # A batch pool's pending lines wait in the batch runner (batches/), which hands the pool a line
            # as a slot frees: they are backlog, not an admission queue. The recommender paces them by the
            # earliest deadline among them (a trace may give lines their own, so not always the oldest's).
            queue_depth, wait_p95, ttft_p95 = 0, 0.0, None
            due = min((r.deadline for _, r in self.queue if r.deadline), default=None)
            if due is not None:
                due_s = (due - self.start).total_seconds() - end
        else:
            queue_depth = len(self.queue)
            wait_p95 = max(_p95(waits) or 0.0, head_age)
            # Requests still queued have no TTFT yet, but at least their wait: counted, so a stalled queue
            # shows in the p95 the step it happens.
            ttft_p95 = _p95(ttfts + [head_age] * len(self.queue)) if (ttfts or self.queue) else None
        signals = PoolSignals(
            pool=self.plan.name, kind=self.plan.kind, at=self.start + timedelta(seconds=end), replicas=ready,
            queue_depth=queue_depth, queue_wait_p95_s=wait_p95, running=running, waiting=0,
            kv_cache_usage=min(1.0, running / capacity), tokens_per_s=tokens / self.step_s,
            requests_per_s=len(waits) / self.step_s, ttft_p95_s=ttft_p95,
            # The share of the ready replicas' token capacity (the curve's peak) that the step used. Not
            # slots held over slots: a replica running few sequences runs each faster (the curve), so slot
            # occupancy measured on many lightly loaded replicas understates what fewer would need.
            busy_share=min(1.0, tokens / (ready * self.curve.peak_tokens_per_s * self.step_s)) if ready else 0.0,
            capacity_per_replica=self.cap, backlog_tokens=backlog, backlog_due_s=due_s,
        )
        decision, self.state = recommend(signals, self.plan.slo, self.plan.policy, self.state)
        self.out.decisions += 1
        live = len(self._live())
        if decision.desired > live:
            for _ in range(decision.desired - live):
                self._start_replica(end)
        elif decision.desired < live:
            self._stop_replicas(end, live - decision.desired)
        if decision.changed:
            self.out.changes += 1
            self.out.reasons.append((end, decision.desired, decision.reason))

    def done(self) -> bool:
        return self.next_arrival >= len(self.arrivals) and not self.queue

    def finish(self, end: float) -> None:
        # A stopped replica is paid for until its last request is done (it drains); the rest until the end.
        for r in self.replicas.values():
            stop = r.stopped if r.stopped is not None else end
            self.out.replica_seconds += max(stop, r.busy_until) - r.started


@dataclass
class ScenarioOutcome:
    scenario: Scenario
    pools: list[PoolOutcome]
    start: datetime
    end_s: float
    step_s: float
    peak_tokens_per_s: float

    def _sum(self, attr: str):
        return sum(getattr(p, attr) for p in self.pools)

    @property
    def cost(self) -> Decimal:
        return sum((p.cost for p in self.pools), Decimal("0.00"))

    @property
    def gpu_hours(self) -> Decimal:
        return sum((p.replica_hours * p.gpus_per_replica for p in self.pools), Decimal(0))

    @property
    def idle_share(self) -> float:
        capacity = sum(p.replica_seconds for p in self.pools) * self.peak_tokens_per_s
        return 1 - self._sum("output_tokens") / capacity if capacity else 0.0

    @property
    def interactive_attainment(self) -> float | None:
        n = self._sum("interactive")
        return self._sum("interactive_met") / n if n else None

    @property
    def batch_attainment(self) -> float | None:
        n = self._sum("batch")
        return self._sum("batch_met") / n if n else None

    @property
    def ttft_p95_s(self) -> float | None:
        return _p95([x for p in self.pools for x in p.ttfts])


Progress = Callable[[str, float, float], None]  # (scenario name, simulated seconds, of total)


def simulate(trace: list[TraceRequest], curve: ReplicaCurve, scenario: Scenario, *, step_s: float = 30.0,
             ttft_slo_s: float, horizon_s: float = 2 * 86400.0, progress: Progress | None = None,
             progress_every_s: float = 6 * 3600.0) -> ScenarioOutcome:
    """Replays `trace` (arrival order) through the scenario's pools. Embedding requests are left out: the
    curve is a generating engine's, and the embedding pool is sized apart."""
    if step_s <= 0:
        raise ValueError("step_s must be above 0")
    if not trace:
        raise ValueError("the trace has no requests")
    start = trace[0].at.replace(minute=0, second=0, microsecond=0)
    last = (trace[-1].at - start).total_seconds()
    whole_days = math.ceil((last + 1e-9) / 86400.0) * 86400.0
    routed: dict[str, list[TraceRequest]] = {p.name: [] for p in scenario.pools}
    by_kind = {kind: p.name for p in scenario.pools for kind in p.serves}
    for r in trace:
        if r.kind in by_kind:
            routed[by_kind[r.kind]].append(r)
    sims = [_PoolSim(p, curve, routed[p.name], start, step_s, ttft_slo_s) for p in scenario.pools]
    t, next_report = 0.0, progress_every_s
    limit = last + horizon_s
    while t < whole_days or (not all(s.done() for s in sims) and t < limit):
        for s in sims:
            s.step(t)
        t += step_s
        if progress and t >= next_report:
            progress(scenario.name, t, whole_days)
            next_report += progress_every_s
    end = t
    for s in sims:
        s.finish(end)
    return ScenarioOutcome(scenario=scenario, pools=[s.out for s in sims], start=start, end_s=end, step_s=step_s,
                           peak_tokens_per_s=curve.peak_tokens_per_s)
