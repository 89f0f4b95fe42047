"""Chat completions: the request flow from key to settled cost.

Views hand raw HTTP pieces in and get plain dicts (or an async iterator of
chunk dicts) back; this module never builds an HTTP response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection as db_connection
from django.db import transaction
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from budgets import services as budgets
from metering import pricing
from metering.models import UsageRecord
from metering.services import UsageDraft, ledger_committed, ledger_insert, ledger_row, record_usage
from metering.tracing import request_attributes, route_attributes, tenant_attributes, tracer, usage_attributes
from tenants import services as tenants
from tollgate import db

from . import errors
from .engines.base import ChatMessage, Engine, EngineError, GenerationRequest, GenerationResult, SamplingParams
from .engines.registry import engine_for_model
from .pools import PoolQueueFull, open_generation
from .protocol import ChatCompletionRequest, parse_chat_completion, parse_json_body

logger = logging.getLogger(__name__)


@dataclass
class PreparedChat:
    """A request that passed auth, validation, catalog and budget checks and may now spend."""

    request_id: str
    received_at: datetime
    tenant: tenants.TenantContext
    body: ChatCompletionRequest
    entry: pricing.CatalogEntry
    engine: Engine
    generation: GenerationRequest
    prompt_tokens: int
    budgets: list[budgets.BudgetStatus] = field(default_factory=list)
    reservation: budgets.Reservation | None = None


@dataclass
class Settlement:
    """What the caller is told about the money once an attempt ends."""

    cost: Decimal
    model: str
    budget_remaining: Decimal | None


def authenticate(authorization: str | None, feature: str | None) -> tenants.TenantContext:
    try:
        return tenants.authenticate_api_key(authorization, feature)
    except tenants.AuthenticationFailed as exc:
        raise errors.InvalidApiKey(exc.reason)
    except tenants.UnknownFeature as exc:
        raise errors.InvalidRequest(str(exc), param="X-Feature", code="unknown_feature")


def prepare_chat(request_id: str, authorization: str | None, feature: str | None, raw_body: bytes,
                 quality: str | None = None) -> PreparedChat:
    """Everything before the first token, in one trip to a worker thread (it all touches the database)."""
    received_at = timezone.now()
    with tracer.start_as_current_span("auth", attributes={"tollgate.request_id": request_id}) as auth_span:
        tenant = authenticate(authorization, feature)
        auth_span.set_attributes(tenant_attributes(
            org_slug=tenant.org_slug, org_id=tenant.org_id, feature=tenant.feature_slug,
            api_key_id=tenant.api_key_id, user_id=tenant.user_id,
        ))
    body = parse_chat_completion(parse_json_body(raw_body), max_tokens_limit=settings.TOLLGATE_MAX_TOKENS_LIMIT)

    with tracer.start_as_current_span("route", attributes={"gen_ai.request.model": body.model}) as route_span:
        try:
            entry = pricing.catalog_entry(body.model, received_at)
        except pricing.UnknownModel as exc:
            raise errors.ModelNotFound(str(exc), param="model")
        engine = engine_for_model(entry.name)
        if engine is None:
            raise errors.ModelNotFound(f"The model `{entry.name}` is not being served right now.", param="model")
        route_span.set_attributes(route_attributes(entry))

    messages = tuple(ChatMessage(role=m.role, content=m.content) for m in body.messages)
    prompt_tokens = engine.count_prompt_tokens(entry.name, messages)
    room = entry.context_window - prompt_tokens
    if room < 1:
        raise errors.ContextLengthExceeded(
            f"This model's maximum context length is {entry.context_window} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
            param="messages",
        )
    max_tokens = body.max_tokens if body.max_tokens is not None else min(settings.TOLLGATE_DEFAULT_MAX_TOKENS, room)
    if max_tokens > room:
        raise errors.ContextLengthExceeded(
            f"This model's maximum context length is {entry.context_window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            f"completion). Please reduce the length of the messages or completion.",
            param="max_tokens",
        )

    try:
        reservation = budgets.reserve_budget(
            request_id, tenant.org_id, tenant.feature_id, tenant.api_key_id, tenant.user_id,
            budgets.CostEstimate(entry, prompt_tokens, max_tokens), received_at,
            quality_high=(quality or "").strip().lower() == "high",
            downgrade=lambda cap: _downgrade_estimate(messages, max_tokens, cap, received_at),
        )
    except (budgets.BudgetExceeded, budgets.QualityUnavailable) as exc:
        refusal = errors.BudgetExceeded if isinstance(exc, budgets.BudgetExceeded) else errors.QualityUnavailable
        record_usage(UsageDraft(
            request_id=request_id, org_id=tenant.org_id, created_at=received_at, model_requested=body.model,
            feature=tenant.feature_slug, api_key_id=tenant.api_key_id, user_id=tenant.user_id,
            status=UsageRecord.Status.REFUSED, error_code=refusal.code, streamed=body.stream,
            input_tokens=0, price_id=entry.price_id,
        ))
        seconds = max(0, int((exc.status.period_end - timezone.now()).total_seconds()))
        raise refusal(str(exc), headers={"Retry-After": str(seconds)})
    statuses = reservation.statuses
    if reservation.downgraded:  # a budget past its downgrade threshold: the cheaper model and cap
        entry, prompt_tokens = reservation.estimate.entry, reservation.estimate.prompt_tokens
        max_tokens, engine = reservation.estimate.max_tokens, engine_for_model(reservation.estimate.entry.name)

    generation = GenerationRequest(
        request_id=request_id,
        model=entry.name,
        messages=messages,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, stop=body.stop),
    )
    return PreparedChat(request_id=request_id, received_at=received_at, tenant=tenant, body=body, entry=entry,
                        engine=engine, generation=generation, prompt_tokens=prompt_tokens, budgets=statuses,
                        reservation=reservation)


def on_thread_pool(fn):
    """``fn`` as a coroutine run on the thread pool, with its database connection handed back afterwards.

    Django's default (thread-sensitive) ``sync_to_async`` runs every request's database work on one shared
    thread, so concurrent requests queue behind each other's queries and commits. This request flow keeps
    no thread-local state between its steps, so its steps may run on any pool thread at once.
    """
    def run_and_release(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            db_connection.close()  # back to the connection pool (PostgreSQL) or closed (SQLite)

    return sync_to_async(run_and_release, thread_sensitive=False)


aprepare_chat = on_thread_pool(prepare_chat)
arelease_reservation = on_thread_pool(budgets.release_reservation)


def _downgrade_estimate(messages, max_tokens: int, cap: int | None, at: datetime) -> budgets.CostEstimate | None:
    """The request on the cheapest served model whose context fits it, with the budget's output cap."""
    for candidate in budgets.downgrade_candidates(at):
        engine = engine_for_model(candidate.name)
        if engine is None:
            continue
        prompt_tokens = engine.count_prompt_tokens(candidate.name, messages)
        room = candidate.context_window - prompt_tokens
        if room >= 1:
            return budgets.CostEstimate(candidate, prompt_tokens, min(max_tokens, cap or max_tokens, room))
    return None


def settle_chat(prepared: PreparedChat, result: GenerationResult | None, *, status: str, error_code: str = "",
                duration_s: float, trace_id: str) -> tuple[UsageDraft, Settlement]:
    """Price the attempt and write its ledger row. Failed attempts are recorded but never billed."""
    draft = UsageDraft(
        request_id=prepared.request_id,
        org_id=prepared.tenant.org_id,
        created_at=prepared.received_at,
        model_requested=prepared.body.model,
        model_served=prepared.entry.name,
        feature=prepared.tenant.feature_slug,
        api_key_id=prepared.tenant.api_key_id,
        user_id=prepared.tenant.user_id,
        trace_id=trace_id,
        pool=result.extra.get("pool", "") if result is not None else "",
        replica=result.extra.get("replica", "") if result is not None else "",
        status=status,
        error_code=error_code,
        streamed=prepared.body.stream,
        duration_ms=duration_s * 1000.0,
        price_id=prepared.entry.price_id,
    )
    if result is not None:
        draft.input_tokens = result.prompt_tokens
        draft.cached_input_tokens = result.cached_prompt_tokens
        draft.output_tokens = result.completion_tokens
        draft.engine_seconds = result.engine_seconds
        draft.queue_wait_ms = float(result.extra.get("queue_wait_s", 0.0)) * 1000.0
        if result.time_to_first_token_s is not None:
            draft.ttft_ms = result.time_to_first_token_s * 1000.0
            if result.completion_tokens > 1:
                draft.tpot_ms = (draft.duration_ms - draft.ttft_ms) / (result.completion_tokens - 1)
        if status != UsageRecord.Status.REFUSED:
            # Failed attempts are priced too: metering records that as retry cost and bills nothing for it.
            cost = pricing.cost_of_tokens(prepared.entry, input_tokens=result.prompt_tokens,
                                          output_tokens=result.completion_tokens,
                                          cached_input_tokens=result.cached_prompt_tokens)
            draft.cost_input, draft.cost_output = cost.input, cost.output
    draft.downgraded = bool(prepared.reservation and prepared.reservation.downgraded)
    # The ledger row and the budget counters commit together: on PostgreSQL as one transaction sent
    # in one round trip (tollgate/db.py), elsewhere through the ORM.
    if db.can_batch():
        record = ledger_row(draft)
        rows = db.run_transaction(
            [ledger_insert(record), *budgets.settlement_statements(prepared.reservation, record.cost_total)],
            synchronous_commit=settings.TOLLGATE_LEDGER_SYNCHRONOUS_COMMIT,
        )
        ledger_committed(record)
        room = budgets.after_settlement(prepared.reservation, record.cost_total, rows)
    else:
        with transaction.atomic():
            record = record_usage(draft)
            room = budgets.settle_reservation(prepared.reservation, record.cost_total)
    remaining = None if room is None else pricing.quantize_money(room)
    return draft, Settlement(cost=draft.cost_total, model=draft.model_served, budget_remaining=remaining)


asettle_chat = on_thread_pool(settle_chat)


def timing_attributes(draft: UsageDraft) -> dict:
    """Span attributes for where the request's time went (the usage row holds the same numbers)."""
    attrs = {"tollgate.replica": draft.replica, "tollgate.queue_wait_ms": draft.queue_wait_ms,
             "tollgate.duration_ms": draft.duration_ms}
    if draft.tpot_ms is not None:
        attrs["tollgate.time_per_output_token_ms"] = draft.tpot_ms
    return attrs


def _chunk(prepared: PreparedChat, created: int, *, delta: dict | None = None, finish_reason: str | None = None,
           usage: dict | None = None) -> dict:
    chunk = {
        "id": completion_id(prepared.request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": prepared.entry.name,
        "system_fingerprint": None,
        "choices": [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ],
    }
    if prepared.body.include_usage:
        chunk["usage"] = usage
    return chunk


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def usage_body(result: GenerationResult) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
    }


class ChatCall:
    """One accepted chat completion: generation, settlement and its spans."""

    def __init__(self, prepared: PreparedChat, server_span: trace.Span):
        self.prepared = prepared
        self.server_span = server_span
        self.started = time.perf_counter()
        self.created = int(prepared.received_at.timestamp())
        self.settlement: Settlement | None = None
        self.stream = None
        self.engine_span = tracer.start_span(
            f"chat {prepared.entry.name}",
            kind=SpanKind.CLIENT,
            context=trace.set_span_in_context(server_span),
            attributes=request_attributes(
                operation="chat", model=prepared.body.model, max_tokens=prepared.generation.sampling.max_tokens,
                temperature=prepared.body.temperature, top_p=prepared.body.top_p, stream=prepared.body.stream,
            ),
        )
        server_span.set_attributes(tenant_attributes(
            org_slug=prepared.tenant.org_slug, org_id=prepared.tenant.org_id, feature=prepared.tenant.feature_slug,
            api_key_id=prepared.tenant.api_key_id, user_id=prepared.tenant.user_id,
        ))

    async def start(self) -> None:
        """Admit the request to its pool (429 + Retry-After when the queue is full) and open the engine stream."""
        if self.stream is not None:
            return
        try:
            self.stream = await open_generation(self.prepared.engine, self.prepared.generation)
        except PoolQueueFull as exc:
            await arelease_reservation(self.prepared.reservation)  # nothing was spent
            self.engine_span.set_status(Status(StatusCode.ERROR, "queue_full"))
            self.engine_span.end()
            raise errors.QueueFull(str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except EngineError as exc:
            await arelease_reservation(self.prepared.reservation)
            self.engine_span.end()
            raise errors.EngineUnavailable(f"The model `{self.prepared.entry.name}` is unavailable: {exc}")

    async def _start_stream(self):
        await self.start()
        return self.stream

    async def _settle(self, result: GenerationResult | None, status: str, error_code: str = "") -> Settlement:
        trace_id = format(self.server_span.get_span_context().trace_id, "032x")
        with tracer.start_as_current_span("settle", context=trace.set_span_in_context(self.server_span)) as span:
            draft, settlement = await asettle_chat(
                self.prepared, result, status=status, error_code=error_code,
                duration_s=time.perf_counter() - self.started, trace_id=trace_id,
            )
            attrs = usage_attributes(draft, response_id=completion_id(self.prepared.request_id),
                                     finish_reason=result.finish_reason if result else None)
            span.set_attributes(attrs)
        attrs.update(timing_attributes(draft))
        self.engine_span.set_attributes(attrs)
        self.server_span.set_attributes(attrs)
        if status == UsageRecord.Status.ERROR:
            self.engine_span.set_status(Status(StatusCode.ERROR, error_code))
        self.engine_span.end()
        self.settlement = settlement
        return settlement

    async def _abandon(self, stream) -> None:
        """Stop generating for a client that left, then bill the tokens produced so far."""
        try:
            await stream.cancel()
        finally:
            await self._settle(stream.result, UsageRecord.Status.CANCELLED, "client_disconnected")

    async def complete(self) -> dict:
        """Generate the whole answer, settle, and return the response body."""
        stream = await self._start_stream()
        parts: list[str] = []
        try:
            async for delta in stream:
                parts.append(delta.text)
        except EngineError as exc:
            await asyncio.shield(self._settle(stream.result, UsageRecord.Status.ERROR, "engine_error"))
            raise errors.EngineUnavailable(f"The engine failed while generating: {exc}")
        except asyncio.CancelledError:
            # Client went away: bill what the engine produced, once.
            await asyncio.shield(self._abandon(stream))
            raise
        except Exception:
            await stream.cancel()
            await asyncio.shield(self._settle(stream.result, UsageRecord.Status.ERROR, "internal_error"))
            raise
        result = stream.result
        await self._settle(result, UsageRecord.Status.OK)
        return {
            "id": completion_id(self.prepared.request_id),
            "object": "chat.completion",
            "created": self.created,
            "model": self.prepared.entry.name,
            "system_fingerprint": None,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "".join(parts), "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }],
            "usage": usage_body(result),
        }

    async def stream_chunks(self) -> AsyncIterator[dict]:
        """Chunk dicts in OpenAI's order: role, content deltas, finish, optional usage.

        Settlement happens exactly once, whether the stream ends, fails or the
        client disconnects (then the tokens produced so far are billed).
        """
        prepared = self.prepared
        stream = await self._start_stream()
        settled = False
        try:
            yield _chunk(prepared, self.created, delta={"role": "assistant", "content": ""})
            try:
                async for delta in stream:
                    if delta.text:
                        yield _chunk(prepared, self.created, delta={"content": delta.text})
            except EngineError as exc:
                settled = True
                await asyncio.shield(self._settle(stream.result, UsageRecord.Status.ERROR, "engine_error"))
                yield errors.EngineUnavailable(f"The engine failed while generating: {exc}").body()
                return
            result = stream.result
            settled = True
            await asyncio.shield(self._settle(result, UsageRecord.Status.OK))
            yield _chunk(prepared, self.created, delta={}, finish_reason=result.finish_reason)
            if prepared.body.include_usage:
                yield _chunk(prepared, self.created, usage=usage_body(result))
        finally:
            if not settled:
                # The client left. The server cancels this task and keeps cancelling it at every await
                # (anyio's cancel scopes are level-triggered), so stopping the engine and billing what it
                # produced run as one shielded task that finishes whatever happens here.
                await asyncio.shield(self._abandon(stream))
