"""Run the recommender for every pool with a policy, keep its state, record its decisions, apply them.

Called by the beat task ``autoscaling.tasks.recommend_replicas`` (with a broker) or by a web process's
sampler thread when it is due (the embedded default: ``autoscaling.background``). One run at a time is
assumed (beat runs one; without beat, ``cache.add`` picks one process per interval).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from . import kubernetes, sampling
from .models import PoolScaling, ScalingDecision
from .recommender import Decision, PoolSignals, RecommenderState, recommend

logger = logging.getLogger(__name__)


def state_to_json(state: RecommenderState) -> dict:
    return {"desired": state.desired,
            "last_up_at": state.last_up_at.isoformat() if state.last_up_at else None,
            "last_down_at": state.last_down_at.isoformat() if state.last_down_at else None,
            "warming": [t.isoformat() for t in state.warming],
            "low_since": state.low_since.isoformat() if state.low_since else None,
            "low_peak": state.low_peak}


def state_from_json(data: dict) -> RecommenderState | None:
    if not data or "desired" not in data:
        return None

    def at(value):
        return datetime.fromisoformat(value) if value else None

    return RecommenderState(desired=int(data["desired"]), last_up_at=at(data.get("last_up_at")),
                            last_down_at=at(data.get("last_down_at")),
                            warming=tuple(datetime.fromisoformat(t) for t in data.get("warming", ())),
                            low_since=at(data.get("low_since")), low_peak=int(data.get("low_peak", 0)))


def signals_to_json(signals: PoolSignals) -> dict:
    data = dataclasses.asdict(signals)
    data["at"] = signals.at.isoformat()
    return data


def recommend_replicas(signals: dict[str, PoolSignals] | None = None, now: datetime | None = None) -> list[Decision]:
    """One run over every enabled pool policy; ``signals``: the combined signals (default: from the store).

    A pool with a policy and no signal (no web process runs it now) is skipped: no data is no reason to
    scale. Returns the decisions made (changed or not)."""
    now = now or timezone.now()
    if signals is None:
        signals = sampling.combined_signals(now)
    decisions = []
    for row in PoolScaling.objects.filter(enabled=True):
        s = signals.get(row.pool)
        if s is None:
            continue
        decisions.append(decide(row, dataclasses.replace(s, at=now)))
    return decisions


def decide(row: PoolScaling, signals: PoolSignals) -> Decision:
    """Run the recommender for one pool, keep its state and latest decision, record and apply a change."""
    decision, state = recommend(signals, row.slo(), row.policy(), state_from_json(row.state))
    applied = ""
    if decision.changed and row.kubernetes_deployment:
        try:
            applied = kubernetes.apply_replicas(row.kubernetes_namespace, row.kubernetes_deployment, decision.desired)
        except Exception as exc:  # the API server refused or is unreachable: recorded, retried next change
            logger.warning("kubernetes %s/%s: %s", row.kubernetes_namespace, row.kubernetes_deployment, exc)
            applied = f"failed: {str(exc)[:180]}"
    with transaction.atomic():
        PoolScaling.objects.filter(pk=row.pk).update(
            state=state_to_json(state), desired_replicas=decision.desired, decided_at=decision.at,
            last_reason=decision.reason)
        if decision.changed:
            ScalingDecision.objects.create(
                pool=decision.pool, at=decision.at, current=decision.current, previous=decision.previous,
                desired=decision.desired, needed=decision.needed, warming=decision.warming, reason=decision.reason,
                signals=signals_to_json(signals), applied=applied)
    return decision


@dataclasses.dataclass(frozen=True)
class PoolAutoscaling:
    """One pool on the GPU dashboard: its signals now, its desired count and its last changes."""

    pool: str
    signals: PoolSignals | None
    policy: PoolScaling | None
    decisions: list


def pool_overview(decisions_per_pool: int = 5) -> list[PoolAutoscaling]:
    signals = sampling.combined_signals()
    policies = {p.pool: p for p in PoolScaling.objects.all()}
    out = []
    for pool in sorted(set(signals) | set(policies)):
        recent = list(ScalingDecision.objects.filter(pool=pool)[:decisions_per_pool])
        out.append(PoolAutoscaling(pool=pool, signals=signals.get(pool), policy=policies.get(pool), decisions=recent))
    return out


def desired_over_time(start: datetime, end: datetime) -> dict[str, list[tuple[datetime, int]]]:
    """Each pool's desired count as a step series over [start, end): the count in force at ``start``, then
    every change."""
    series: dict[str, list[tuple[datetime, int]]] = {}
    for pool in ScalingDecision.objects.filter(at__lt=end).values_list("pool", flat=True).distinct():
        before = ScalingDecision.objects.filter(pool=pool, at__lt=start).first()
        points = [(start, before.desired)] if before else []
        points += [(d.at, d.desired) for d in ScalingDecision.objects.filter(pool=pool, at__gte=start, at__lt=end)
                   .order_by("at", "id")]
        if points:
            points.append((min(end, timezone.now()), points[-1][1]))
            series[pool] = points
    return series
