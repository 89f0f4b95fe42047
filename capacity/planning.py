"""A capacity plan: the same trace through three ways of running the pools, and what each costs.

* ``static``: one shared pool, a fixed count sized to the peak (:func:`static_replicas` states the rule).
* ``autoscaled``: the same shared pool, its count set every step by the recommender.
* ``separated``: interactive traffic in its own pool, autoscaled for TTFT; batch in a pool of its own run
  flat out (target busy share 1) at the pace its deadlines need, so it fills the hours the interactive pool
  does not need instead of queueing in front of interactive requests.

:func:`run_plan` returns plain JSON-able data (money as strings of Decimal) that the command prints and
stores and the staff page draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal

from autoscaling.recommender import PoolSLO, ScalingPolicy

from .curves import ReplicaCurve
from .simulate import PoolPlan, Progress, Scenario, ScenarioOutcome, simulate
from .traces import DEFAULT_COMPLETION_WINDOW, TraceRequest

PEAK_WINDOW_S = 900  # the static rule sizes to the busiest 15 minutes


@dataclass(frozen=True)
class PlanInputs:
    ttft_slo_s: float = 1.0
    step_s: float = 30.0
    warmup_s: float = 180.0
    target_busy_share: float = 0.7
    usd_per_replica_hour: Decimal = Decimal("2.50")
    gpus_per_replica: int = 1
    batch_usd_per_replica_hour: Decimal | None = None  # None: the same rate as interactive
    max_replicas: int = 64
    # Equal SLO attainment: two scenarios within this many points (of 1) are called equal.
    attainment_tolerance: float = 0.01


def _peak_tokens_per_s(trace: list[TraceRequest], kind: str) -> float:
    """The busiest `PEAK_WINDOW_S` window's output tokens/s of `kind`, windows aligned to the clock."""
    windows: dict[int, int] = {}
    for r in trace:
        if r.kind == kind:
            key = int(r.at.timestamp() // PEAK_WINDOW_S)
            windows[key] = windows.get(key, 0) + r.output_tokens
    return max(windows.values(), default=0) / PEAK_WINDOW_S


def _daily_batch_tokens(trace: list[TraceRequest]) -> int:
    days: dict = {}
    for r in trace:
        if r.kind == "batch":
            days[r.at.date()] = days.get(r.at.date(), 0) + r.output_tokens
    return max(days.values(), default=0)


def static_replicas(trace: list[TraceRequest], curve: ReplicaCurve, inputs: PlanInputs) -> int:
    """The static rule: enough replicas for the busiest 15 minutes of interactive output tokens/s at the
    target busy share of one replica's peak throughput, plus enough for the largest day of batch tokens
    spread evenly over its completion window, flat out: ``ceil(P / (T x u)) + ceil(B / (T x W))``."""
    t = curve.peak_tokens_per_s
    interactive = math.ceil(_peak_tokens_per_s(trace, "interactive") / (t * inputs.target_busy_share))
    window = DEFAULT_COMPLETION_WINDOW.total_seconds()
    batch = math.ceil(_daily_batch_tokens(trace) / (t * window))
    return max(1, interactive + batch)


def scenarios(trace: list[TraceRequest], curve: ReplicaCurve, inputs: PlanInputs) -> tuple[Scenario, ...]:
    n_static = static_replicas(trace, curve, inputs)
    window = DEFAULT_COMPLETION_WINDOW.total_seconds()
    policy = ScalingPolicy(min_replicas=1, max_replicas=max(inputs.max_replicas, n_static),
                           target_busy_share=inputs.target_busy_share, warmup_s=inputs.warmup_s,
                           replica_tokens_per_s=curve.peak_tokens_per_s)
    shared_slo = PoolSLO(ttft_p95_s=inputs.ttft_slo_s, completion_window_s=window)
    rate = inputs.usd_per_replica_hour
    batch_rate = inputs.batch_usd_per_replica_hour or rate
    shared = dict(name="shared", kind="interactive", serves=("interactive", "batch"), usd_per_replica_hour=rate,
                  slo=shared_slo, gpus_per_replica=inputs.gpus_per_replica)
    return (
        Scenario("static", f"Static: one shared pool, {n_static} replicas (sized to the peak)",
                 (PoolPlan(replicas=n_static, **shared),)),
        Scenario("autoscaled", "Autoscaled: one shared pool, the recommender sets the count",
                 (PoolPlan(replicas=1, policy=policy, **shared),)),
        Scenario("separated", "Separated: interactive pool autoscaled for TTFT, batch pool flat out for its window",
                 (PoolPlan(name="interactive", kind="interactive", serves=("interactive",), replicas=1,
                           usd_per_replica_hour=rate, slo=PoolSLO(ttft_p95_s=inputs.ttft_slo_s), policy=policy,
                           gpus_per_replica=inputs.gpus_per_replica),
                  PoolPlan(name="batch", kind="batch", serves=("batch",), replicas=0, usd_per_replica_hour=batch_rate,
                           slo=PoolSLO(completion_window_s=window),
                           policy=replace(policy, min_replicas=0, target_busy_share=1.0),
                           gpus_per_replica=inputs.gpus_per_replica))),
    )


def _money(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


def _share(x: float | None) -> float | None:
    return None if x is None else round(x, 5)


def _timeline(outcome: ScenarioOutcome, every_s: float) -> dict:
    """Each pool's replicas (ready and paid for) and work done, averaged over `every_s` buckets."""
    pools = {}
    for pool in outcome.pools:
        buckets: dict[int, list] = {}
        for t, ready, paid, queue, tps in pool.timeline:
            b = buckets.setdefault(int(t // every_s), [0, 0.0, 0.0, 0, 0.0])
            b[0] += 1
            b[1] += ready
            b[2] += paid
            b[3] = max(b[3], queue)
            b[4] += tps
        keys = sorted(buckets)
        pools[pool.name] = {
            "t": [(outcome.start + timedelta(seconds=k * every_s)).isoformat() for k in keys],
            "ready": [round(buckets[k][1] / buckets[k][0], 3) for k in keys],
            "paid": [round(buckets[k][2] / buckets[k][0], 3) for k in keys],
            "queue_max": [buckets[k][3] for k in keys],
            "tokens_per_s": [round(buckets[k][4] / buckets[k][0], 1) for k in keys],
        }
    return pools


def _demand(trace: list[TraceRequest], start, every_s: float) -> dict:
    """Output tokens/s arriving per bucket, by kind: the demand the replicas answer."""
    series: dict[str, dict[int, int]] = {}
    for r in trace:
        k = int((r.at - start).total_seconds() // every_s)
        series.setdefault(r.kind, {})
        series[r.kind][k] = series[r.kind].get(k, 0) + r.output_tokens
    last = max((k for s in series.values() for k in s), default=0)
    keys = range(last + 1)
    return {"t": [(start + timedelta(seconds=k * every_s)).isoformat() for k in keys],
            **{kind: [round(s.get(k, 0) / every_s, 1) for k in keys] for kind, s in sorted(series.items())}}


def summarize(outcome: ScenarioOutcome) -> dict:
    return {
        "name": outcome.scenario.name,
        "title": outcome.scenario.title,
        "gpu_hours": str(outcome.gpu_hours.quantize(Decimal("0.001"))),
        "cost_usd": _money(outcome.cost),
        "idle_share": _share(outcome.idle_share),
        "interactive_attainment": _share(outcome.interactive_attainment),
        "batch_attainment": _share(outcome.batch_attainment),
        "ttft_p95_s": None if outcome.ttft_p95_s is None else round(outcome.ttft_p95_s, 4),
        "pools": [{
            "name": p.name, "serves": list(p.serves), "autoscaled": p.autoscaled, "requests": p.requests,
            "served": p.served, "output_tokens": p.output_tokens, "replica_hours": str(p.replica_hours.quantize(
                Decimal("0.001"))), "gpu_hours": str((p.replica_hours * p.gpus_per_replica).quantize(
                Decimal("0.001"))), "cost_usd": _money(p.cost), "usd_per_replica_hour": str(p.usd_per_replica_hour),
            "replicas_started": p.started_replicas, "decisions": p.decisions, "changes": p.changes,
            "max_ready": max((row[1] for row in p.timeline), default=0),
            "reasons": [{"at": (outcome.start + timedelta(seconds=t)).isoformat(), "desired": d, "reason": why}
                        for t, d, why in p.reasons[:200]],
        } for p in outcome.pools],
    }


def _saving(base: dict, other: dict) -> dict:
    b, o = Decimal(base["cost_usd"]), Decimal(other["cost_usd"])
    return {"usd": _money(b - o), "share": round(float((b - o) / b), 5) if b else None}


def run_plan(trace: list[TraceRequest], curve: ReplicaCurve, inputs: PlanInputs = PlanInputs(), *,
             progress: Progress | None = None, trace_label: str = "") -> dict:
    if not trace:
        raise ValueError("the trace has no requests")
    results, outcomes = [], []
    for scenario in scenarios(trace, curve, inputs):
        outcome = simulate(trace, curve, scenario, step_s=inputs.step_s, ttft_slo_s=inputs.ttft_slo_s,
                           progress=progress)
        outcomes.append(outcome)
        results.append(summarize(outcome))
    by_name = {r["name"]: r for r in results}
    span_s = max(o.end_s for o in outcomes)
    every_s = max(inputs.step_s, 300.0 if span_s <= 3 * 86400 else 900.0)
    counts: dict[str, int] = {}
    for r in trace:
        counts[r.kind] = counts.get(r.kind, 0) + 1

    def equal(a: str, b: str, key: str) -> bool | None:
        x, y = by_name[a][key], by_name[b][key]
        return None if x is None or y is None else abs(x - y) <= inputs.attainment_tolerance

    return {
        "trace": {"label": trace_label, "requests": len(trace), "by_kind": counts,
                  "start": trace[0].at.isoformat(), "end": trace[-1].at.isoformat(),
                  "output_tokens": sum(r.output_tokens for r in trace)},
        "curve": curve.as_dict(),
        "inputs": {"ttft_slo_s": inputs.ttft_slo_s, "step_s": inputs.step_s, "warmup_s": inputs.warmup_s,
                   "target_busy_share": inputs.target_busy_share,
                   "usd_per_replica_hour": str(inputs.usd_per_replica_hour),
                   "batch_usd_per_replica_hour": str(inputs.batch_usd_per_replica_hour or inputs.usd_per_replica_hour),
                   "gpus_per_replica": inputs.gpus_per_replica, "attainment_tolerance": inputs.attainment_tolerance,
                   "static_replicas": static_replicas(trace, curve, inputs),
                   "completion_window_s": DEFAULT_COMPLETION_WINDOW.total_seconds()},
        "scenarios": results,
        "savings": {
            "autoscaled_vs_static": {**_saving(by_name["static"], by_name["autoscaled"]),
                                     "interactive_attainment_equal": equal("static", "autoscaled",
                                                                           "interactive_attainment"),
                                     "batch_attainment_equal": equal("static", "autoscaled", "batch_attainment")},
            "separated_vs_autoscaled": {**_saving(by_name["autoscaled"], by_name["separated"]),
                                        "interactive_attainment_gain": round(
                                            (by_name["separated"]["interactive_attainment"] or 0)
                                            - (by_name["autoscaled"]["interactive_attainment"] or 0), 5)},
            "separated_vs_static": _saving(by_name["static"], by_name["separated"]),
        },
        "demand": _demand(trace, outcomes[0].start, every_s),
        "timelines": {o.scenario.name: _timeline(o, every_s) for o in outcomes},
    }
