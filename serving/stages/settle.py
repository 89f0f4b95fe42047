"""Settle: turn the request's attempts into usage rows and settle them with the budget, exactly once.

Serving states the facts of each attempt (tokens, timings, pool, status) as
a ``UsageDraft``; ``budgets.settlement.settle_usage`` writes every row and
moves the reservation to the real cost in one transaction. Runs whatever
happened: after an answer, after a failure (the reservation goes back, a
failed attempt is recorded and not billed), after a refusal (its row), and
when the client left (what the engine produced is billed).
"""

from __future__ import annotations

import time
from decimal import Decimal

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from budgets.settlement import SettledUsage, asettle_usage
from metering import pricing
from metering.models import UsageRecord
from metering.services import UsageDraft
from metering.tracing import tracer, usage_attributes

from ..flow.context import EMBEDDINGS, GENERATION_KINDS, Attempt, RequestContext

NOTHING = SettledUsage(records=(), cost=Decimal(0), budget_remaining=None)


def response_id(ctx: RequestContext) -> str:
    return f"chatcmpl-{ctx.request_id}"


async def run(ctx: RequestContext) -> None:
    if ctx.settled is not None or ctx.settling:
        return
    ctx.settling = True
    drafts = [_attempt_draft(ctx, attempt) for attempt in ctx.attempts]
    answering = [d for a, d in zip(ctx.attempts, drafts) if a.kind in GENERATION_KINDS]
    if answering and ctx.token_savings:
        # What token optimization removed from the prompt this attempt was sent (savings at its price).
        answering[-1].tokens_saved = sum(step.saved for step in ctx.token_savings)
    if ctx.refusal_code:
        drafts.append(_refusal_draft(ctx))
    if not drafts and (ctx.reservation is None or not ctx.reservation.held):
        ctx.settled = NOTHING  # refused before anything was held or ran (bad request, unknown model)
        return
    with tracer.start_as_current_span("settle", context=trace.set_span_in_context(ctx.span)) as span:
        ctx.settled = await asettle_usage(ctx.reservation, drafts)
        # After the settlement: finalize_costs has filled in GPU cost, chargeback mode and savings.
        per_attempt = [usage_attributes(draft, response_id=response_id(ctx), finish_reason=_finish_reason(attempt))
                       for attempt, draft in zip(ctx.attempts, drafts)]
        if per_attempt:
            span.set_attributes(per_attempt[-1])
        elif drafts:  # a refusal
            span.set_attributes(usage_attributes(drafts[-1], response_id=response_id(ctx), finish_reason=None))
    for attempt, draft, attrs in zip(ctx.attempts, drafts, per_attempt):
        attrs.update(timing_attributes(draft))
        if ctx.span is not None and attempt is ctx.attempts[-1]:
            ctx.span.set_attributes(attrs)
        if attempt.span is not None:
            attempt.span.set_attributes(attrs)
            if attempt.status == UsageRecord.Status.ERROR:
                attempt.span.set_status(Status(StatusCode.ERROR, attempt.error_code))
            attempt.span.end()


def _finish_reason(attempt: Attempt | None) -> str | None:
    result = attempt.result if attempt is not None else None
    return getattr(result, "finish_reason", None)


def timing_attributes(draft: UsageDraft) -> dict:
    """Span attributes for where the request's time went (the usage row holds the same numbers)."""
    attrs = {"tollgate.replica": draft.replica, "tollgate.queue_wait_ms": draft.queue_wait_ms,
             "tollgate.duration_ms": draft.duration_ms}
    if draft.tpot_ms is not None:
        attrs["tollgate.time_per_output_token_ms"] = draft.tpot_ms
    return attrs


def _base_draft(ctx: RequestContext) -> UsageDraft:
    tenant = ctx.tenant
    draft = UsageDraft(
        request_id=ctx.request_id, org_id=tenant.org_id, created_at=ctx.received_at,
        model_requested=ctx.request.model, feature=tenant.feature_slug, api_key_id=tenant.api_key_id,
        user_id=tenant.user_id, trace_id=ctx.trace_id, endpoint=ctx.endpoint,
        streamed=bool(getattr(ctx.request, "stream", False)), batch_id=ctx.batch_id,
    )
    decision = ctx.route.decision if ctx.route is not None else None
    if decision is not None:
        # One decision: the router's, capped by a downgrade budget when the budget chose a cheaper option.
        downgraded = bool(ctx.reservation and ctx.reservation.downgraded)
        draft.route_tier = ctx.served.estimate.entry.tier if downgraded else decision.tier
        draft.route_model, draft.route_score = decision.model, decision.score
        draft.route_reason = "budget_cap" if downgraded else decision.reason
    return draft


def _refusal_draft(ctx: RequestContext) -> UsageDraft:
    draft = _base_draft(ctx)
    draft.status, draft.error_code = UsageRecord.Status.REFUSED, ctx.refusal_code
    draft.price_id = ctx.route.primary.estimate.entry.price_id if ctx.route else None
    return draft


def _cache_hit_draft(draft: UsageDraft, attempt: Attempt) -> UsageDraft:
    """A cache hit: no engine, no GPU time, no tokens billed; the org's price per hit (0 by default) as its
    cost, and what the served model would have charged for the answer's tokens as ``savings_cache``."""
    entry, result = attempt.option.estimate.entry, attempt.result
    draft.cache_hit = True
    would_have_cost = pricing.cost_of_tokens(entry, input_tokens=result.prompt_tokens,
                                             output_tokens=getattr(result, "completion_tokens", 0))
    draft.savings_cache = would_have_cost.input + would_have_cost.output
    draft.cost_input = result.extra.get("cache_hit_price") or Decimal(0)
    draft.cache_layer = result.extra.get("cache_layer", "")
    return draft


def _attempt_draft(ctx: RequestContext, attempt: Attempt) -> UsageDraft:
    if attempt.finished is None:
        attempt.finished = time.perf_counter()
    entry = attempt.option.estimate.entry
    draft = _base_draft(ctx)
    draft.model_served, draft.price_id = entry.name, entry.price_id
    draft.attempt_kind, draft.status, draft.error_code = attempt.kind, attempt.status, attempt.error_code
    draft.retry_attempt = attempt.retry
    draft.discarded = attempt.discarded
    draft.duration_ms = attempt.duration_s * 1000.0
    draft.downgraded = bool(ctx.reservation and ctx.reservation.downgraded)
    result = attempt.result
    if attempt.kind == UsageRecord.AttemptKind.CACHE_HIT:
        return _cache_hit_draft(draft, attempt)
    if ctx.endpoint == EMBEDDINGS:
        draft.pool, draft.replica = attempt.pool, attempt.replica
        draft.queue_wait_ms = attempt.queue_wait_s * 1000.0
        if result is not None:
            draft.input_tokens = result.prompt_tokens
            draft.engine_seconds = result.engine_seconds
            draft.queue_wait_ms += result.queue_seconds * 1000.0
            draft.cost_input = _token_cost(ctx, entry, input_tokens=result.prompt_tokens, output_tokens=0).input
        return draft
    draft.pool, draft.replica = attempt.pool, attempt.replica
    if result is None:
        return draft
    draft.pool = result.extra.get("pool", "") or draft.pool
    draft.replica = result.extra.get("replica", "") or draft.replica
    draft.input_tokens = result.prompt_tokens
    draft.cached_input_tokens = result.cached_prompt_tokens
    draft.output_tokens = result.completion_tokens
    draft.engine_seconds = result.engine_seconds
    draft.queue_wait_ms = float(result.extra.get("queue_wait_s", 0.0)) * 1000.0
    if result.time_to_first_token_s is not None:
        draft.ttft_ms = result.time_to_first_token_s * 1000.0
        if result.completion_tokens > 1:
            draft.tpot_ms = (draft.duration_ms - draft.ttft_ms) / (result.completion_tokens - 1)
    # Failed attempts are priced too: metering records that as retry cost and bills nothing for it.
    cost = _token_cost(ctx, entry, input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens,
                       cached_input_tokens=result.cached_prompt_tokens)
    draft.cost_input, draft.cost_output = cost.input, cost.output
    return draft


def _token_cost(ctx: RequestContext, entry: pricing.CatalogEntry, **tokens) -> pricing.TokenCost:
    """The attempt's tokens at the price book's price; a batch line's at its batch discount."""
    cost = pricing.cost_of_tokens(entry, **tokens)
    return pricing.at_batch_discount(entry, cost) if ctx.batch_id else cost
