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
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from budgets import services as budgets
from metering import pricing
from metering.models import UsageRecord
from metering.services import UsageDraft, record_usage
from metering.tracing import request_attributes, tenant_attributes, tracer, usage_attributes
from tenants import services as tenants

from . import errors
from .engines.base import ChatMessage, EngineError, GenerationRequest, GenerationResult, SamplingParams
from .engines.registry import engine_for_model
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
    engine: object
    generation: GenerationRequest
    prompt_tokens: int
    budgets: list[budgets.BudgetStatus] = field(default_factory=list)


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


def prepare_chat(request_id: str, authorization: str | None, feature: str | None, raw_body: bytes) -> PreparedChat:
    """Everything before the first token, in one trip to a worker thread (it all touches the database)."""
    received_at = timezone.now()
    tenant = authenticate(authorization, feature)
    body = parse_chat_completion(parse_json_body(raw_body), max_tokens_limit=settings.TOLLGATE_MAX_TOKENS_LIMIT)

    try:
        entry = pricing.catalog_entry(body.model, received_at)
    except pricing.UnknownModel as exc:
        raise errors.ModelNotFound(str(exc), param="model")
    engine = engine_for_model(entry.name)
    if engine is None:
        raise errors.ModelNotFound(f"The model `{entry.name}` is not being served right now.", param="model")

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
        statuses = budgets.check_budgets(tenant.org_id, tenant.feature_id, received_at)
    except budgets.BudgetExceeded as exc:
        record_usage(UsageDraft(
            request_id=request_id, org_id=tenant.org_id, created_at=received_at, model_requested=body.model,
            feature=tenant.feature_slug, api_key_id=tenant.api_key_id, user_id=tenant.user_id,
            status=UsageRecord.Status.REFUSED, error_code="budget_exceeded", streamed=body.stream,
            input_tokens=0, price_id=entry.price_id,
        ))
        seconds = max(0, int((exc.status.period_end - timezone.now()).total_seconds()))
        raise errors.BudgetExceeded(str(exc), headers={"Retry-After": str(seconds)})

    generation = GenerationRequest(
        request_id=request_id,
        model=entry.name,
        messages=messages,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, stop=body.stop),
    )
    return PreparedChat(request_id=request_id, received_at=received_at, tenant=tenant, body=body, entry=entry,
                        engine=engine, generation=generation, prompt_tokens=prompt_tokens, budgets=statuses)


aprepare_chat = sync_to_async(prepare_chat)


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
        pool="in-process",
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
        if status in (UsageRecord.Status.OK, UsageRecord.Status.CANCELLED):
            cost = pricing.cost_of_tokens(prepared.entry, input_tokens=result.prompt_tokens,
                                          output_tokens=result.completion_tokens,
                                          cached_input_tokens=result.cached_prompt_tokens)
            draft.cost_input, draft.cost_output = cost.input, cost.output
    record_usage(draft)
    remaining = None
    if prepared.budgets:
        remaining = max(min(s.amount - s.spent for s in prepared.budgets) - draft.cost_total, Decimal(0))
    return draft, Settlement(cost=draft.cost_total, model=draft.model_served, budget_remaining=remaining)


asettle_chat = sync_to_async(settle_chat)


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

    def _start_stream(self):
        try:
            return self.prepared.engine.stream(self.prepared.generation)
        except EngineError as exc:
            raise errors.EngineUnavailable(f"The model `{self.prepared.entry.name}` is unavailable: {exc}")

    async def _settle(self, result: GenerationResult | None, status: str, error_code: str = "") -> Settlement:
        trace_id = format(self.server_span.get_span_context().trace_id, "032x")
        draft, settlement = await asettle_chat(
            self.prepared, result, status=status, error_code=error_code,
            duration_s=time.perf_counter() - self.started, trace_id=trace_id,
        )
        attrs = usage_attributes(draft, response_id=completion_id(self.prepared.request_id),
                                 finish_reason=result.finish_reason if result else None)
        self.engine_span.set_attributes(attrs)
        self.server_span.set_attributes(attrs)
        if status == UsageRecord.Status.ERROR:
            self.engine_span.set_status(Status(StatusCode.ERROR, error_code))
        self.engine_span.end()
        self.settlement = settlement
        return settlement

    async def complete(self) -> dict:
        """Generate the whole answer, settle, and return the response body."""
        stream = self._start_stream()
        parts: list[str] = []
        try:
            async for delta in stream:
                parts.append(delta.text)
        except EngineError as exc:
            await asyncio.shield(self._settle(stream.result, UsageRecord.Status.ERROR, "engine_error"))
            raise errors.EngineUnavailable(f"The engine failed while generating: {exc}")
        except asyncio.CancelledError:
            # Client went away: bill what the engine produced, once.
            await stream.cancel()
            await asyncio.shield(self._settle(stream.result, UsageRecord.Status.CANCELLED, "client_disconnected"))
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
        stream = self._start_stream()
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
                await stream.cancel()
                await asyncio.shield(self._settle(stream.result, UsageRecord.Status.CANCELLED,
                                                  "client_disconnected"))
