"""Route: decide, once, which model and engine serve the request, and what that can cost at most.

The requested model must be in the catalog (priced) and served; the engine
must honour every parameter the request sets (else a 400 naming it); the
prompt is counted on that model and must leave room for the answer. When a
downgrade budget covers the request, the cheapest served alternative is
priced here too, so the budget stage can pick it under its locks without
calling back into serving. (Model routing, ``model: "auto"``, will decide
here as well.)
"""

from __future__ import annotations

from django.conf import settings
from opentelemetry import trace

from budgets import services as budgets
from metering import pricing
from metering.tracing import route_attributes, tracer

from .. import errors
from ..engines.base import Engine
from ..flow.context import EMBEDDINGS, RequestContext, Route, RouteOption
from ..pools import deployment_for_model, engine_for_model
from ..protocol import ChatCompletionRequest


def run(ctx: RequestContext) -> None:
    with tracer.start_as_current_span("route", context=trace.set_span_in_context(ctx.span),
                                      attributes={"gen_ai.request.model": ctx.request.model}) as span:
        ctx.route = route_embeddings(ctx) if ctx.endpoint == EMBEDDINGS else route_chat(ctx)
        span.set_attributes(route_attributes(ctx.route.primary.estimate.entry))
        if getattr(ctx.request, "user", None):
            span.set_attribute("tollgate.end_user", ctx.request.user[:256])  # the caller's own end-user id
        if ctx.route.alternatives:
            span.set_attribute("tollgate.route.alternatives", [o.model for o in ctx.route.alternatives])


def _catalog_entry(model: str, ctx: RequestContext) -> pricing.CatalogEntry:
    try:
        return pricing.catalog_entry(model, ctx.received_at)
    except pricing.UnknownModel as exc:
        raise errors.ModelNotFound(str(exc), param="model")


def unsupported_parameters(request: ChatCompletionRequest, engine: Engine) -> list[str]:
    return sorted(request.engine_parameters() - engine.supported_parameters)


def route_chat(ctx: RequestContext) -> Route:
    request: ChatCompletionRequest = ctx.request
    entry = _catalog_entry(request.model, ctx)
    engine = engine_for_model(entry.name)
    if engine is None:
        raise errors.ModelNotFound(f"The model `{entry.name}` is not being served right now.", param="model")
    unsupported = unsupported_parameters(request, engine)
    if unsupported:
        raise errors.UnsupportedParameter(unsupported[0], entry.name)
    requested = request.max_output_tokens
    limit = settings.TOLLGATE_MAX_TOKENS_LIMIT
    if requested is not None and requested > limit:
        param = request.max_output_tokens_param
        raise errors.InvalidRequest(f"'{param}' must be between 1 and {limit}; got {requested}.", param=param,
                                    code="invalid_value")
    ctx.messages = ctx.messages or request.to_chat_messages()  # optimize_tokens may have set them
    primary = _chat_option(ctx, entry, engine, requested)

    alternatives: tuple[RouteOption, ...] = ()
    tenant = ctx.tenant
    if budgets.needs_alternatives(tenant.org_id, tenant.feature_id, tenant.api_key_id, tenant.user_id,
                                  ctx.received_at):
        cheapest = _cheapest_alternative(ctx, request, primary.estimate.max_tokens)
        alternatives = (cheapest,) if cheapest is not None else ()
    return Route(primary=primary, alternatives=alternatives)


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


def _cheapest_alternative(ctx: RequestContext, request: ChatCompletionRequest, max_tokens: int) -> RouteOption | None:
    """The cheapest served model that takes the request's parameters and fits its prompt (output capped to the
    room it leaves); a downgrade budget may serve the request there instead."""
    for candidate in budgets.downgrade_candidates(ctx.received_at):
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
