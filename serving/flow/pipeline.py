"""Running a request context through its stages, then settling it exactly once.

``serve_chat``, ``serve_completions`` and ``serve_embeddings`` are the flow's
entry points. The stages before the answer are a setting
(``TOLLGATE_CHAT_STAGES``, ``TOLLGATE_COMPLETIONS_STAGES``,
``TOLLGATE_EMBEDDINGS_STAGES``: dotted module paths, in order, as Django
lists its backends); the flow always ends with ``settle`` and ``respond``.
Consecutive blocking stages share one trip to the thread pool, so routing
and the budget hold cost one hop, as they did before stages existed.

A stage that already has the answer sets ``ctx.replay`` (an idempotent
replay) or ``ctx.cache_hit`` (a cache hit, whose attempt settles and is
answered, whole or streamed, like a generated one), and no further stage runs. ``ctx.on_answered`` and
``ctx.on_failed`` run once the request is answered or has failed.

Whatever a stage raises, the request is settled before the error leaves
the flow: the reservation is given back, a refusal or a failed attempt is
recorded. A streamed answer settles when its stream ends, fails, or its
client leaves (then what the engine produced is billed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import import_module

from asgiref.sync import async_to_sync
from django.conf import settings
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from core.money import format_decimal
from core.threads import on_thread_pool
from metering.tracing import tenant_attributes, tracer

from .. import errors
from ..errors import ErrorResponse
from ..protocol import ChatCompletionChunk, ChatCompletionResponse, CompletionResponse, EmbeddingResponse
from ..stages import escalate, generate, idempotency, respond, settle
from .context import CHAT, COMPLETIONS, EMBEDDINGS, RequestContext


# A streamed answer's chunks come in lists: each list is what was ready together, to be sent in one write.
# A chunk is a wire type, or the JSON of one already rendered (bytes: see respond.Chunks).
ChunkLists = AsyncIterator[list[ChatCompletionChunk | CompletionResponse | ErrorResponse | bytes]]


@dataclass
class ChatOutcome:
    """A chat completion: the whole ``response``, or (``stream=True``) ``chunks`` to send as they come.

    A caller that takes ``chunks`` must await ``close()`` when it is done with them, however it ends:
    a stream whose client left before the first chunk was even asked for is settled there.
    """

    headers: dict[str, str]
    response: ChatCompletionResponse | None = None
    chunks: ChunkLists | None = None
    close: Callable[[], Awaitable[None]] = field(default=lambda: _nothing())


async def _nothing() -> None:
    return None


@dataclass
class CompletionsOutcome:
    """A text completion: the whole ``response``, or (``stream=True``) ``chunks``; as ``ChatOutcome``."""

    headers: dict[str, str]
    response: CompletionResponse | None = None
    chunks: ChunkLists | None = None
    close: Callable[[], Awaitable[None]] = field(default=lambda: _nothing())


@dataclass
class EmbeddingsOutcome:
    headers: dict[str, str]
    response: EmbeddingResponse


# ----------------------------------------------------------------- stages


@dataclass(frozen=True)
class _Stage:
    """One stage module: its ``run(ctx)`` (a coroutine function, or a blocking function for the thread pool)
    and, where it has one, its ``run_in_memory(ctx) -> bool``: the stage finished without I/O (True), or
    nothing changed and ``run`` is needed (False). That never blocks, so it runs on the event loop, or on the
    pool thread of the blocking stage before it: most requests then cross to the thread pool once for all
    the stages before the generation instead of once per blocking stage, and none when every stage finishes
    in memory or in its ``run_async(ctx) -> bool`` (a coroutine: its I/O done from the event loop, True; or
    nothing changed, False, and ``run`` is needed)."""

    run: Callable
    blocking: bool
    run_in_memory: Callable[[RequestContext], bool] | None
    run_async: Callable[[RequestContext], Awaitable[bool]] | None


_loaded: dict[tuple[str, ...], tuple[_Stage, ...]] = {}


def stages_at(paths: list[str] | tuple[str, ...]) -> tuple[_Stage, ...]:
    """The stage modules at ``paths`` (each with ``run(ctx)``, some with ``run_in_memory(ctx)``)."""
    key = tuple(paths)
    if key not in _loaded:
        modules = [import_module(path) for path in key]
        _loaded[key] = tuple(_Stage(m.run, not inspect.iscoroutinefunction(m.run), getattr(m, "run_in_memory", None),
                                    getattr(m, "run_async", None))
                             for m in modules)
    return _loaded[key]


def _blocking_from(ctx: RequestContext, stages: tuple[_Stage, ...], first: int) -> int:
    """On a pool thread: the blocking stage ``first``, then each following stage that is blocking or
    finishes in memory; returns the index of the first stage left for the event loop."""
    stages[first].run(ctx)
    at = first + 1
    while at < len(stages) and not ctx.answered_early:
        stage = stages[at]
        if stage.blocking:
            stage.run(ctx)
        elif not (stage.run_in_memory is not None and stage.run_in_memory(ctx)):
            return at
        at += 1
    return at


_on_thread_pool_from = on_thread_pool(_blocking_from)  # built once, not per request


async def _run_stages(ctx: RequestContext, paths) -> None:
    """The stages in order, until one has the answer (a replay, a cache hit); on any error the request is
    settled (hold released, refusal recorded) first."""
    stages = stages_at(paths)
    try:
        at = 0
        while at < len(stages):
            stage = stages[at]
            if stage.run_in_memory is not None and stage.run_in_memory(ctx):
                at += 1
            elif stage.run_async is not None and await stage.run_async(ctx):
                at += 1
            elif stage.blocking:
                at = await _on_thread_pool_from(ctx, stages, at)
            else:
                await stage.run(ctx)
                at += 1
            if ctx.answered_early:
                return
    except BaseException:
        await asyncio.shield(settle.run(ctx))
        raise


async def _answered(ctx: RequestContext, response, headers: dict[str, str]) -> None:
    if ctx.on_answered:
        body = response.model_dump_json()
        await on_thread_pool(_call_each)(ctx.on_answered, body, headers)


async def _failed(ctx: RequestContext) -> None:
    if ctx.on_failed:
        await asyncio.shield(on_thread_pool(_call_each)(ctx.on_failed))


def _carry_stage_headers(ctx: RequestContext, exc: BaseException) -> None:
    """An error answer carries the headers stages added (the rate-limit state), as every answer does;
    the error's own headers (its Retry-After) win."""
    if isinstance(exc, errors.OpenAIError) and ctx.response_headers:
        exc.headers = {**ctx.response_headers, **exc.headers}


def _call_each(callbacks, *args) -> None:
    for callback in callbacks:
        callback(*args)


def _own_span(ctx: RequestContext, name: str) -> trace.Span | None:
    """A root span for a flow called without the edge (a task, a command); None when the edge made one."""
    if ctx.span is not None:
        return None
    ctx.span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes={"tollgate.request_id": ctx.request_id})
    ctx.span.set_attributes(tenant_attributes(
        org_slug=ctx.tenant.org_slug, org_id=ctx.tenant.org_id, feature=ctx.tenant.feature_slug,
        api_key_id=ctx.tenant.api_key_id, user_id=ctx.tenant.user_id))
    return ctx.span


def _end_own_span(span: trace.Span | None, exc: BaseException | None = None) -> None:
    if span is None:
        return
    if isinstance(exc, errors.OpenAIError):
        span.set_attribute("error.type", exc.code or exc.type)
        if exc.status >= 500:
            span.set_status(Status(StatusCode.ERROR, exc.message))
    elif exc is not None:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.end()


# ----------------------------------------------------------------- chat


async def serve_chat(ctx: RequestContext) -> ChatOutcome:
    """Serve one chat completion. Raises ``errors.OpenAIError`` (already settled) when it cannot."""
    return await _served(ctx, CHAT, f"chat {ctx.request.model}", _serve_chat)


async def _served(ctx: RequestContext, endpoint: str, span_name: str, serve):
    """Run ``serve(ctx, own_span)`` for a generating endpoint; on failure carry the stage headers and give back
    what stages kept; once answered whole, end the flow's own span and keep the answer."""
    ctx.endpoint = endpoint
    own = _own_span(ctx, span_name)
    try:
        outcome = await serve(ctx, own)
    except BaseException as exc:
        _carry_stage_headers(ctx, exc)
        await _failed(ctx)
        _end_own_span(own, exc)
        raise
    if outcome.chunks is None:
        _end_own_span(own)
        await _answered(ctx, outcome.response, outcome.headers)
    return outcome


async def _serve_chat(ctx: RequestContext, own) -> ChatOutcome:
    await _run_stages(ctx, settings.TOLLGATE_CHAT_STAGES)
    if ctx.replay is not None:
        # This request's stage headers (its rate-limit state) over the kept answer's, which are the first's.
        return ChatOutcome(headers={**idempotency.replay_headers(ctx.replay), **ctx.response_headers},
                           response=ChatCompletionResponse.model_validate_json(ctx.replay.body))
    if ctx.cache_hit is not None:
        return await _answer_from_cache(ctx, own)
    if ctx.request.stream:
        # The first delta before any byte is sent, so a failure before the first token is an HTTP error.
        # A request that may escalate is answered (and validated) whole first, then streamed.
        if escalate.may_escalate(ctx):
            deltas = escalate.replayed(await _settled_if_it_fails(ctx, escalate.answer(ctx)))
        else:
            deltas = generate.batches(ctx)
        first = await _settled_if_it_fails(ctx, anext(deltas, None))
        chunks = _stream(ctx, deltas, first, own)
        return ChatOutcome(headers=respond.stream_headers(ctx), chunks=chunks,
                           close=lambda: _close_stream(ctx, chunks, deltas, own))
    text = "".join(delta.text for delta in await _settled_if_it_fails(ctx, escalate.answer(ctx)))
    await settle.run(ctx)
    return ChatOutcome(headers=respond.headers(ctx), response=respond.completion(ctx, text))


async def _answer_from_cache(ctx: RequestContext, own) -> ChatOutcome:
    """Settle the cache-hit attempt (its ledger row), then answer with its text: whole, or replayed as SSE."""
    await settle.run(ctx)
    text = ctx.attempts[-1].result.text
    if not ctx.request.stream:
        return ChatOutcome(headers=respond.headers(ctx), response=respond.completion(ctx, text))
    chunks = _replayed_stream(ctx, text, own)
    return ChatOutcome(headers=respond.headers(ctx), chunks=chunks, close=chunks.aclose)


async def _replayed_stream(ctx: RequestContext, text: str, own) -> ChunkLists:
    chunks = respond.Chunks(ctx)
    try:  # all of it is there already: one list, one write
        out = [chunks.role()]
        out += [chunks.content(delta) for delta in respond.replayed_deltas(ctx.attempts[-1].result)]
        out.append(chunks.finish())
        final = chunks.usage()
        if final is not None:
            out.append(final)
        yield out
    finally:
        _end_own_span(own)


async def _abandon(ctx: RequestContext, deltas=None) -> None:
    # One task for every step: under the server's level-triggered cancellation every await of the
    # caller is cancelled again, so stopping the engine and billing what it produced must not be split.
    await generate.abandon(ctx)
    if deltas is not None:
        await deltas.aclose()  # the engine-side iteration frees its replica slot now, not at garbage collection
    await settle.run(ctx)


async def _settled_if_it_fails(ctx: RequestContext, step):
    """Await a step of the generation; if it fails, settle first (abandon, when the client left)."""
    try:
        return await step
    except asyncio.CancelledError:
        await asyncio.shield(_abandon(ctx))
        raise
    except BaseException:
        await asyncio.shield(settle.run(ctx))
        raise


async def _stream(ctx: RequestContext, batches, first, own, chunks=None) -> ChunkLists:
    """The answer's chunks, a list per batch of deltas (``first`` is the first batch, already read)."""
    chunks = chunks or respond.Chunks(ctx)
    error: BaseException | None = None
    try:
        opening = chunks.role()  # a chat answer's role; a text completion's echoed prompt, if any
        out = [] if opening is None else [opening]  # sent with the first tokens: they are there already
        try:
            if first is not None:
                out += _content(chunks, first)
                if out:
                    yield out
                async for batch in batches:
                    out = _content(chunks, batch)
                    if out:
                        yield out
            elif out:
                yield out
        except errors.OpenAIError as exc:
            # Headers are gone already; the error travels as an SSE event, as OpenAI does.
            error = exc
            await asyncio.shield(settle.run(ctx))
            yield [exc.wire()]
            return
        await asyncio.shield(settle.run(ctx))
        final = chunks.usage()
        yield [chunks.finish()] if final is None else [chunks.finish(), final]
    except BaseException as exc:
        error = exc
        raise
    finally:
        if ctx.settled is None and not ctx.settling:
            # The client left (this generator is being closed or cancelled): stop and bill, shielded.
            await asyncio.shield(_abandon(ctx, batches))
        _end_own_span(own, error)


def _content(chunks, batch) -> list:
    # A token held back by a stop string has no text but still has its logprob.
    return [chunks.content(delta) for delta in batch if delta.text or delta.logprobs]


async def _close_stream(ctx: RequestContext, chunks, deltas, own) -> None:
    await chunks.aclose()  # runs _stream's own clean-up if it ever started
    if ctx.settled is None and not ctx.settling:  # it never started: nothing was sent, what ran is billed
        await asyncio.shield(_abandon(ctx, deltas))
        _end_own_span(own)


# ----------------------------------------------------------------- text completions


async def serve_completions(ctx: RequestContext) -> CompletionsOutcome:
    """Serve one /v1/completions request. Raises ``errors.OpenAIError`` (already settled) when it cannot.

    Each prompt of a list is served as a request of its own (its own id, stages and usage rows, run
    concurrently) and the answers come back as one response, a choice per prompt.
    """
    ctx.endpoint = COMPLETIONS
    prompts = ctx.request.prompts
    if len(prompts) == 1:
        return await _serve_one_completion(ctx)
    if ctx.request.stream:
        raise errors.InvalidRequest("A streamed completion takes one prompt; send one request per prompt.",
                                    param="prompt")
    if ctx.idempotency_key is not None:
        raise errors.InvalidRequest(f"'{idempotency.HEADER}' takes one prompt per request.",
                                    param=idempotency.HEADER, code="unsupported_parameter")
    parts = [_one_prompt(ctx, index) for index in range(len(prompts))]
    answers = await asyncio.gather(*(_serve_one_completion(part, index) for index, part in enumerate(parts)),
                                   return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    headers = dict(answers[-1].headers)
    headers["X-Tollgate-Cost"] = format_decimal(sum(part.settled.cost for part in parts))
    headers["X-Tollgate-Attempts"] = str(sum(len(part.attempts) for part in parts))
    return CompletionsOutcome(headers=headers, response=respond.merged_completions([a.response for a in answers]))


async def _all_deltas(ctx: RequestContext) -> list:
    return [delta async for delta in generate.deltas(ctx)]


def _one_prompt(ctx: RequestContext, index: int) -> RequestContext:
    """A context for the ``index``-th prompt alone: same caller and options, nothing decided yet.

    Its request id is the request's own with the prompt's index (so a batch line's parts are known on a
    replay, as the line's own id is)."""
    return dataclasses.replace(
        ctx, request=ctx.request.for_prompt(index), request_id=f"{ctx.request_id}-{index}", attempts=[],
        response_headers=dict(ctx.response_headers), token_savings=[], on_answered=[], on_failed=[],
    )


async def _serve_one_completion(ctx: RequestContext, index: int = 0) -> CompletionsOutcome:
    return await _served(ctx, COMPLETIONS, f"completions {ctx.request.model}",
                         lambda c, own: _serve_completion(c, own, index))


async def _serve_completion(ctx: RequestContext, own, index: int) -> CompletionsOutcome:
    await _run_stages(ctx, settings.TOLLGATE_COMPLETIONS_STAGES)
    if ctx.replay is not None:
        return CompletionsOutcome(headers={**idempotency.replay_headers(ctx.replay), **ctx.response_headers},
                                  response=CompletionResponse.model_validate_json(ctx.replay.body))
    if ctx.request.stream:
        deltas = generate.batches(ctx)
        first = await _settled_if_it_fails(ctx, anext(deltas, None))
        chunks = _stream(ctx, deltas, first, own, respond.CompletionChunks(ctx))
        return CompletionsOutcome(headers=respond.stream_headers(ctx), chunks=chunks,
                                  close=lambda: _close_stream(ctx, chunks, deltas, own))
    # Routing policies' answer checks and escalation apply to chat answers only (escalate.py re-asks in chat).
    text = "".join(delta.text for delta in await _settled_if_it_fails(ctx, _all_deltas(ctx)))
    await settle.run(ctx)
    return CompletionsOutcome(headers=respond.headers(ctx), response=respond.text_completion(ctx, text, index))


# ----------------------------------------------------------------- embeddings


async def serve_embeddings(ctx: RequestContext) -> EmbeddingsOutcome:
    """Serve one embeddings request. Raises ``errors.OpenAIError`` (already settled) when it cannot."""
    ctx.endpoint = EMBEDDINGS
    own = _own_span(ctx, f"embeddings {ctx.request.model}")
    try:
        await _run_stages(ctx, settings.TOLLGATE_EMBEDDINGS_STAGES)
        if ctx.replay is not None:  # (an embedding-cache hit is an attempt like any other: settled below)
            outcome = EmbeddingsOutcome(headers={**idempotency.replay_headers(ctx.replay), **ctx.response_headers},
                                        response=EmbeddingResponse.model_validate_json(ctx.replay.body))
        else:
            await settle.run(ctx)
            outcome = EmbeddingsOutcome(headers=respond.headers(ctx), response=respond.embeddings(ctx))
    except BaseException as exc:
        _carry_stage_headers(ctx, exc)
        await _failed(ctx)
        _end_own_span(own, exc)
        raise
    _end_own_span(own)
    await _answered(ctx, outcome.response, outcome.headers)
    return outcome


# ----------------------------------------------------------------- without an event loop


def serve_chat_blocking(ctx: RequestContext) -> ChatCompletionResponse:
    """``serve_chat`` for synchronous callers (Celery tasks, management commands); never streams."""
    if ctx.request.stream:
        raise errors.InvalidRequest("A blocking call cannot stream; send stream=false.", param="stream")
    return async_to_sync(serve_chat)(ctx).response


def serve_embeddings_blocking(ctx: RequestContext) -> EmbeddingResponse:
    return async_to_sync(serve_embeddings)(ctx).response


def serve_completions_blocking(ctx: RequestContext) -> CompletionResponse:
    """``serve_completions`` for synchronous callers; never streams."""
    if ctx.request.stream:
        raise errors.InvalidRequest("A blocking call cannot stream; send stream=false.", param="stream")
    return async_to_sync(serve_completions)(ctx).response
