"""Span attribute names: OpenTelemetry GenAI semantic conventions where they exist, tollgate.* otherwise."""

from __future__ import annotations

from opentelemetry import trace

from .services import UsageDraft

tracer = trace.get_tracer("tollgate")

GEN_AI_PROVIDER = "tollgate"


def request_attributes(*, operation: str, model: str, max_tokens: int | None, temperature: float | None,
                       top_p: float | None, stream: bool) -> dict:
    attrs = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": GEN_AI_PROVIDER,
        "gen_ai.request.model": model,
        "tollgate.stream": stream,
    }
    if max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = max_tokens
    if temperature is not None:
        attrs["gen_ai.request.temperature"] = temperature
    if top_p is not None:
        attrs["gen_ai.request.top_p"] = top_p
    return attrs


def tenant_attributes(*, org_slug: str, org_id: int, feature: str, api_key_id: int, user_id: int | None) -> dict:
    attrs = {"tollgate.org": org_slug, "tollgate.org_id": org_id, "tollgate.feature": feature,
             "tollgate.api_key_id": api_key_id}
    if user_id is not None:
        attrs["tollgate.user_id"] = user_id
    return attrs


def route_attributes(entry) -> dict:
    """The routing decision: the catalog model chosen and the price in force."""
    return {
        "gen_ai.request.model": entry.name,
        "tollgate.route.model": entry.name,
        "tollgate.route.tier": entry.tier,
        "tollgate.price_id": entry.price_id,
    }


def usage_attributes(draft: UsageDraft, *, response_id: str, finish_reason: str | None) -> dict:
    attrs = {
        "gen_ai.response.id": response_id,
        "gen_ai.response.model": draft.model_served,
        "gen_ai.usage.input_tokens": draft.input_tokens,
        "gen_ai.usage.output_tokens": draft.output_tokens,
        "tollgate.usage.cached_input_tokens": draft.cached_input_tokens,
        "tollgate.cost.input": str(draft.cost_input),
        "tollgate.cost.output": str(draft.cost_output),
        "tollgate.cost.gpu": str(draft.cost_gpu),
        "tollgate.cost.total": str(draft.cost_total),
        "tollgate.cost.base": str(draft.charge.base),
        "tollgate.cost.retry": str(draft.charge.retry),
        "tollgate.cost.escalation": str(draft.charge.escalation),
        "tollgate.savings.cache": str(draft.savings_cache),
        "tollgate.savings.tokens": str(draft.savings_tokens),
        "tollgate.tokens_saved": draft.tokens_saved,
        "tollgate.chargeback_mode": draft.chargeback_mode,
        "tollgate.retry_attempt": draft.retry_attempt,
        "tollgate.escalation": draft.attempt_kind == "escalation",
        "tollgate.discarded": draft.discarded,
        "tollgate.pool": draft.pool,
        "tollgate.downgraded": draft.downgraded,
        "tollgate.attempt_kind": draft.attempt_kind,
        "tollgate.status": draft.status,
        "tollgate.cache_hit": draft.cache_hit,
        "tollgate.engine_seconds": draft.engine_seconds,
        "tollgate.request_id": draft.request_id,
    }
    if finish_reason:
        attrs["gen_ai.response.finish_reasons"] = (finish_reason,)
    if draft.ttft_ms is not None:
        attrs["tollgate.ttft_ms"] = draft.ttft_ms
    attrs.update(decision_attributes(requested=draft.model_requested, tier=draft.route_tier,
                                     model=draft.route_model, reason=draft.route_reason, score=draft.route_score))
    return attrs


def decision_attributes(*, requested: str, tier: int | None, model: str, reason: str, score: float | None) -> dict:
    """The routing decision (routing/services.py) as span attributes; nothing when no decision was made."""
    if not reason:
        return {}
    attrs = {"tollgate.route.requested_model": requested, "tollgate.route.reason": reason,
             "tollgate.route.chosen_model": model}
    if tier is not None:
        attrs["tollgate.route.tier"] = tier
    if score is not None:
        attrs["tollgate.route.score"] = score
    return attrs
