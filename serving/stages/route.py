"""Route: decide, once, which model and engine serve the request, and what that can cost at most.

The requested model must be in the catalog (priced) and served; the engine
must honour every parameter the request sets (else a 400 naming it); the
prompt is counted on that model and must leave room for the answer. When a
downgrade budget covers the request, the cheapest served alternative is
priced here too, so the budget stage can pick it under its locks without
calling back into serving.

``model: "auto"`` asks the router (routing.services.decide_tier) for a
tier, and serves the cheapest allowed, served model at that tier. The org's
(or feature's) routing policy limits both paths: a named model it does not
allow, or below its minimum tier, is refused (403, param ``model``), and a
downgrade budget's alternatives come from the models it allows. The
decision goes on the route (span, usage rows) and in ``X-Tollgate-Route``.
"""

from __future__ import annotations

import time

from django.conf import settings
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from budgets import services as budgets
from core.memo import NEEDS_A_THREAD, in_memory_only
from metering import pricing
from metering.tracing import decision_attributes, route_attributes, tracer
from routing import services as routing

from .. import errors, validation
from ..engines.base import Engine
from ..flow.context import EMBEDDINGS, RequestContext, Route, RouteOption
from ..pools import deployment_for_model, engine_for_model
from ..protocol import ChatCompletionRequest


# Prompts up to this many characters are counted on the event loop (a few hundred microseconds at most).
COUNT_ON_LOOP_MAX_CHARS = 16_384


def run(ctx: RequestContext) -> None:
    with tracer.start_as_current_span("route", context=trace.set_span_in_context(ctx.span),
                                      attributes={"gen_ai.request.model": ctx.request.model}) as span:
        ctx.route = route_embeddings(ctx) if ctx.endpoint == EMBEDDINGS else route_chat(ctx)
        _describe(ctx, span)


def run_in_memory(ctx: RequestContext) -> bool:
    """Route on the event loop when this process holds everything routing reads (catalog, prices, pools,
    policies, budget definitions); False, with nothing decided, when some of it must be loaded first.
    ``model: "auto"``, embeddings and long prompts always go to ``run``: the router may embed the prompt,
    and counting a long prompt's tokens is CPU work that would hold up every other request on the loop."""
    if ctx.request.model == routing.AUTO or ctx.endpoint == EMBEDDINGS:
        return False
    ctx.messages = ctx.messages or ctx.request.to_chat_messages()
    if sum(len(m.content or "") for m in ctx.messages) > COUNT_ON_LOOP_MAX_CHARS:
        return False
    started = time.time_ns()
    try:
        with in_memory_only():
            route = route_chat(ctx)
    except NEEDS_A_THREAD:
        return False
    except Exception as exc:
        span = _span(ctx, started)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()
        raise
    ctx.route = route
    span = _span(ctx, started)
    _describe(ctx, span)
    span.end()
    return True


def _span(ctx: RequestContext, started_ns: int) -> trace.Span:
    # Started once routing is known to finish here, dated from when it began.
    return tracer.start_span("route", context=trace.set_span_in_context(ctx.span), start_time=started_ns,
                             attributes={"gen_ai.request.model": ctx.request.model})


def _describe(ctx: RequestContext, span: trace.Span) -> None:
    span.set_attributes(route_attributes(ctx.route.primary.estimate.entry))
    if getattr(ctx.request, "user", None):
        span.set_attribute("tollgate.end_user", ctx.request.user[:256])  # the caller's own end-user id
    if ctx.route.alternatives:
        span.set_attribute("tollgate.route.alternatives", [o.model for o in ctx.route.alternatives])
    decision = ctx.route.decision
    if decision is not None:
        span.set_attributes(decision_attributes(requested=decision.requested, tier=decision.tier,
                                                model=decision.model, reason=decision.reason,
                                                score=decision.score))
        ctx.response_headers["X-Tollgate-Route"] = routing.route_header(decision.tier, decision.reason)


def _catalog_entry(model: str, ctx: RequestContext) -> pricing.CatalogEntry:
    try:
        return pricing.catalog_entry(model, ctx.received_at)
    except pricing.UnknownModel as exc:
        raise errors.ModelNotFound(str(exc), param="model")


def unsupported_parameters(request: ChatCompletionRequest, engine: Engine) -> list[str]:
    return sorted(request.engine_parameters() - engine.supported_parameters)


def _check_max_tokens(ctx: RequestContext, request: ChatCompletionRequest, policy: routing.Policy) -> int | None:
    """The output cap asked for, within the gateway's limit (else a 400) and the policy's cap.

    A policy's ``max_tokens_cap`` lowers what is asked for (or the default), and says so in
    ``X-Tollgate-Max-Tokens-Capped: <asked>-><cap>``: the answer may stop sooner than the caller asked.
    """
    requested = request.max_output_tokens
    limit = settings.TOLLGATE_MAX_TOKENS_LIMIT
    if requested is not None and requested > limit:
        param = request.max_output_tokens_param
        raise errors.InvalidRequest(f"'{param}' must be between 1 and {limit}; got {requested}.", param=param,
                                    code="invalid_value")
    cap = policy.max_tokens_cap
    if cap and (requested or settings.TOLLGATE_DEFAULT_MAX_TOKENS) > cap:
        if requested is not None:
            ctx.response_headers["X-Tollgate-Max-Tokens-Capped"] = f"{requested}->{cap}"
        return cap
    return requested


def _check_policy(entry: pricing.CatalogEntry, policy: routing.Policy) -> None:
    if not policy.allows(entry.name):
        raise errors.ModelNotAllowed(f"The model `{entry.name}` is not allowed by your organization's routing "
                                     f"policy; use one of: {', '.join(sorted(policy.allowed_models))}, or `auto`.")
    if entry.tier < policy.min_tier:
        raise errors.ModelNotAllowed(f"The model `{entry.name}` (tier {entry.tier}) is below your organization's "
                                     f"minimum tier ({policy.min_tier}); use a stronger model or `auto`.",
                                     code="model_below_minimum_tier")


def route_chat(ctx: RequestContext) -> Route:
    request: ChatCompletionRequest = ctx.request
    tenant = ctx.tenant
    policy = routing.policy_for(tenant.org_id, tenant.feature_id)
    if request.model == routing.AUTO:
        requested = _check_max_tokens(ctx, request, policy)
        ctx.messages = ctx.messages or request.to_chat_messages()  # optimize_tokens may have set them
        primary, decision = _route_auto(ctx, request, policy, requested)
    else:
        entry = _catalog_entry(request.model, ctx)
        _check_policy(entry, policy)
        engine = engine_for_model(entry.name)
        if engine is None:
            raise errors.ModelNotFound(f"The model `{entry.name}` is not being served right now.", param="model")
        unsupported = unsupported_parameters(request, engine)
        if unsupported:
            raise errors.UnsupportedParameter(unsupported[0], entry.name)
        requested = _check_max_tokens(ctx, request, policy)
        ctx.messages = ctx.messages or request.to_chat_messages()  # optimize_tokens may have set them
        primary = _chat_option(ctx, entry, engine, requested)
        decision = routing.RouteDecision.explicit(entry.name, entry.tier)

    alternatives: tuple[RouteOption, ...] = ()
    if budgets.needs_alternatives(tenant.org_id, tenant.feature_id, tenant.api_key_id, tenant.user_id,
                                  ctx.received_at):
        cheapest = _cheapest_alternative(ctx, request, primary.estimate.max_tokens, policy)
        alternatives = (cheapest,) if cheapest is not None else ()
    ctx.checks = validation.checks_for(request, policy)
    ctx.escalation_limit = policy.escalation_limit
    return Route(primary=primary, alternatives=alternatives, decision=decision)


def _route_auto(ctx: RequestContext, request: ChatCompletionRequest, policy: routing.Policy,
                requested: int | None) -> tuple[RouteOption, routing.RouteDecision]:
    """The router's tier, served on the cheapest allowed model there that takes the request and fits it."""
    candidates: list[tuple[pricing.CatalogEntry, Engine]] = []
    unsupported: list[str] = []
    for entry in budgets.downgrade_candidates(ctx.received_at):  # active, priced, cheapest first
        if not policy.allows(entry.name) or entry.tier < policy.min_tier:
            continue
        engine = engine_for_model(entry.name)
        if engine is None:
            continue
        missing = unsupported_parameters(request, engine)
        if missing:
            unsupported = unsupported or missing
            continue
        candidates.append((entry, engine))
    if not candidates:
        if unsupported:
            raise errors.UnsupportedParameter(unsupported[0], routing.AUTO)
        raise errors.ModelNotFound("No model your routing policy allows is being served right now, so `auto` "
                                   "has nothing to route to.", param="model")
    json_requested = request.response_format is not None and request.response_format.type != "text"
    tier = routing.decide_tier([(m.role, m.content or "") for m in ctx.messages], json_requested=json_requested,
                               tools_requested=bool(request.tools), quality_high=ctx.quality_high, policy=policy,
                               served_tiers=[entry.tier for entry, _ in candidates])
    # The decided tier first (cheapest model there first), then stronger tiers, for a prompt too long for it.
    ordered = sorted((c for c in candidates if c[0].tier >= tier.tier), key=lambda c: c[0].tier != tier.tier)
    too_long: errors.ContextLengthExceeded | None = None
    for entry, engine in ordered:
        try:
            option = _chat_option(ctx, entry, engine, requested)
        except errors.ContextLengthExceeded as exc:
            too_long = too_long or exc
            continue
        reason = tier.reason if entry.tier == tier.tier else "context_window"
        return option, routing.RouteDecision(requested=routing.AUTO, tier=entry.tier, model=entry.name,
                                             reason=reason, score=tier.score)
    raise too_long


def _chat_option(ctx: RequestContext, entry: pricing.CatalogEntry, engine: Engine, requested: int | None) -> RouteOption:
    prompt_tokens = engine.count_prompt_tokens(entry.name, ctx.messages)
    room = entry.context_window - prompt_tokens
    if room < 1:
        raise errors.ContextLengthExceeded(
            f"This model's maximum context length is {entry.context_window} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param="messages",
        )
    max_tokens = requested if requested is not None else min(settings.TOLLGATE_DEFAULT_MAX_TOKENS, room)
    if max_tokens > room:
        raise errors.ContextLengthExceeded(
            f"This model's maximum context length is {entry.context_window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            f"completion). Please reduce the length of the messages or completion.",
            param=ctx.request.max_output_tokens_param,
        )
    return RouteOption(budgets.CostEstimate(entry, prompt_tokens, max_tokens), engine)


def _cheapest_alternative(ctx: RequestContext, request: ChatCompletionRequest, max_tokens: int,
                          policy: routing.Policy) -> RouteOption | None:
    """The cheapest served model the routing policy allows that takes the request's parameters and fits its
    prompt (output capped to the room it leaves); a downgrade budget may serve the request there instead."""
    for candidate in budgets.downgrade_candidates(ctx.received_at):
        if not policy.allows(candidate.name) or candidate.tier < policy.min_tier:
            continue
        engine = engine_for_model(candidate.name)
        if engine is None or unsupported_parameters(request, engine):
            continue
        prompt_tokens = engine.count_prompt_tokens(candidate.name, ctx.messages)
        room = candidate.context_window - prompt_tokens
        if room >= 1:
            return RouteOption(budgets.CostEstimate(candidate, prompt_tokens, min(max_tokens, room)), engine)
    return None


def route_embeddings(ctx: RequestContext) -> Route:
    entry = _catalog_entry(ctx.request.model, ctx)
    deployment = deployment_for_model(entry.name)
    if deployment is None or deployment.pool.config.kind != "embedding":
        raise errors.ModelNotFound(f"The model `{entry.name}` does not serve embeddings.", param="model")
    embedder = deployment.replicas[0].engine
    dimensions = getattr(embedder, "dimensions", None)
    if ctx.request.dimensions is not None and ctx.request.dimensions != dimensions:
        raise errors.InvalidRequest(
            f"The model `{entry.name}` returns {dimensions} dimensions only." if dimensions else
            f"The model `{entry.name}` does not take 'dimensions'.", param="dimensions", code="invalid_value")
    input_tokens = embedder.count_tokens(ctx.request.texts) if hasattr(embedder, "count_tokens") else 0
    return Route(primary=RouteOption(budgets.CostEstimate(entry, input_tokens, 0), deployment))


def escalation_option(ctx: RequestContext, current: RouteOption) -> RouteOption | None:
    """One tier up from ``current``: the cheapest model of the lowest stronger tier the policy allows that is
    served, takes the request's parameters and fits its prompt with the same output cap (None: none is)."""
    tenant = ctx.tenant
    policy = routing.policy_for(tenant.org_id, tenant.feature_id)
    stronger = [entry for entry in budgets.downgrade_candidates(ctx.received_at)  # cheapest first
                if entry.tier > current.estimate.entry.tier and policy.allows(entry.name)]
    for entry in sorted(stronger, key=lambda e: e.tier):  # (a stable sort: cheapest first within a tier)
        engine = engine_for_model(entry.name)
        if engine is None or unsupported_parameters(ctx.request, engine):
            continue
        try:
            return _chat_option(ctx, entry, engine, current.estimate.max_tokens)
        except errors.ContextLengthExceeded:
            continue
    return None
