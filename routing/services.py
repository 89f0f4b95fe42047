"""Routing decisions: the policy that applies to a request, and the tier `model: "auto"` serves it at.

Plain functions and dataclasses, so the route stage (serving), the batch
API or a benchmark call the same code. Nothing here knows about engines or
HTTP: the caller passes the request as (role, text) pairs and the tiers it
can serve, and gets a ``TierDecision`` back.

The order of the decision, each step naming itself in ``reason``:

1. ``quality_high``: the caller asked for the top tier (``X-Quality: high``).
2. ``classifier``: the classifier's most likely tier, trusted when its
   probability reaches the policy's ``classifier_min_confidence``;
   ``default_tier`` otherwise (reason ``low_confidence``).
3. ``min_tier``: raised to the policy's minimum tier.
4. ``nearest_tier``: moved to the nearest tier something allowed is served
   at (up first, so a request is never served weaker than decided).

A downgrade budget may still cap the tier, under its locks, among the
cheaper options priced with the same decision (reason ``budget_cap``; see
serving/stages/route.py and budgets.reserve_budget).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from core.memo import Memo

from . import features
from .models import RoutingPolicy

logger = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class Policy:
    """The routing policy in force for one org and feature (the defaults where none is set)."""

    policy_id: int | None = None
    allowed_models: frozenset[str] = frozenset()  # empty: every catalog model
    default_tier: int = 2
    min_tier: int = 1
    classifier_min_confidence: float = 0.5
    # Read by escalation and token optimization (routing/models.py says what each does).
    escalation_limit: int = 1
    validate_json: bool = True
    logprob_mean_threshold: float | None = None
    logprob_min_threshold: float | None = None
    escalate_on_truncation: bool = False
    check_unsafe_content: bool = True
    dedupe_system_prompts: bool = True
    history_token_budget: int | None = None
    context_token_budget: int | None = None
    compact_tool_output: bool = True
    max_tokens_cap: int | None = None

    def allows(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


DEFAULT_POLICY = Policy()

_POLICY_FIELDS = [name for name in Policy.__dataclass_fields__ if name not in ("policy_id", "allowed_models")]

# Policies per (org, feature), per web process (core/memo.py); admin edits here drop them at once
# (routing.signals), other processes see them within TOLLGATE_CONFIG_CACHE_TTL_S.
_policies: Memo[Policy] = Memo("routing policies")


def forget_cached_policies() -> None:
    _policies.invalidate()


def _policy_from_row(row: RoutingPolicy) -> Policy:
    return Policy(policy_id=row.pk, allowed_models=frozenset(m.name for m in row.allowed_models.all()),
                  **{name: getattr(row, name) for name in _POLICY_FIELDS})


def _load_policy(org_id: int, feature_id: int | None) -> Policy:
    rows = {row.feature_id: row for row in RoutingPolicy.objects.filter(organization_id=org_id)
            .prefetch_related("allowed_models")}
    # A feature's policy replaces its org's as a whole; the org's applies to every other feature.
    row = rows.get(feature_id) if feature_id is not None and feature_id in rows else rows.get(None)
    return _policy_from_row(row) if row is not None else DEFAULT_POLICY


def policy_for(org_id: int, feature_id: int | None) -> Policy:
    return _policies.get((org_id, feature_id), lambda: _load_policy(org_id, feature_id))


def memoized_policy(org_id: int, feature_id: int | None) -> Policy | None:
    """The policy when this process has it memoized (no database: safe on the event loop), else None."""
    return _policies.peek((org_id, feature_id))


@dataclass(frozen=True)
class TierDecision:
    tier: int
    reason: str
    # The classifier's probability for the tier it picked; None when it did not run (quality_high).
    score: float | None = None


@dataclass(frozen=True)
class RouteDecision:
    """What the route stage decided for a chat request, as the span and the usage row record it."""

    requested: str  # the model the caller sent: a name or "auto"
    tier: int
    model: str
    reason: str  # "explicit" for a named model, else TierDecision.reason
    score: float | None = None

    @classmethod
    def explicit(cls, model: str, tier: int) -> "RouteDecision":
        return cls(requested=model, tier=tier, model=model, reason="explicit")


def decide_tier(messages: Sequence[tuple[str, str]], *, json_requested: bool, tools_requested: bool,
                quality_high: bool, policy: Policy, served_tiers: Sequence[int]) -> TierDecision:
    """The tier to serve ``messages`` at, among ``served_tiers`` (tiers with an allowed, served model)."""
    tiers = sorted(set(served_tiers))
    if not tiers:
        raise ValueError("no tier is served")
    if quality_high:
        return TierDecision(tiers[-1], "quality_high")
    signals = features.signals_of(messages, json_requested=json_requested, tools_requested=tools_requested)
    try:
        # Imported here: scikit-learn loads only in processes that route `auto` requests.
        from . import classifier

        tier, score = classifier.get_classifier().predict(features.last_user_text(messages), signals)
        reason = "classifier"
    except Exception:  # a missing or broken classifier file must not fail requests: serve the default tier
        logger.exception("the routing classifier failed; serving the policy's default tier")
        tier, score, reason = policy.default_tier, None, "classifier_unavailable"
    if score is not None and score < policy.classifier_min_confidence:
        tier, reason = policy.default_tier, "low_confidence"
    if tier < policy.min_tier:
        tier, reason = policy.min_tier, "min_tier"
    if tier not in tiers:
        above = [t for t in tiers if t >= tier]
        tier, reason = (above[0] if above else tiers[-1]), "nearest_tier"
    return TierDecision(tier, reason, None if score is None else round(score, 4))


def route_header(tier: int, reason: str) -> str:
    """The value of X-Tollgate-Route."""
    return f"{tier}:{reason}"

