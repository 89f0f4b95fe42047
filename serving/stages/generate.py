"""Generate: run the request on the engine it was routed (or downgraded) to, as one or more attempts.

``run`` opens the first attempt: the pool's admission queue (a full queue is
a 429 with Retry-After before anything is spent) and one replica's stream.
``deltas`` (and ``collect``) then consume it, whole or delta by delta, and
mark how each attempt ended; the flow settles them all.

Retries: a try that fails before its first token in a way that cost nothing
(``EngineError.retry_safe``: refused or reset connection, an overloaded
worker) is retried as a new attempt of kind ``retry``, on another replica
while one can take it, after a full-jitter backoff, while the request has
tries left (``TOLLGATE_RETRY_MAX_ATTEMPTS``) and the pool's retry budget
allows. Once a token has reached the caller nothing is retried. Every failed
attempt is a usage row of its own (status error): its tokens and
engine-seconds are retry cost, recorded for the org and never billed.

Deadline: a generation that runs past its deadline (``X-Tollgate-Timeout``,
at most ``TOLLGATE_GENERATION_TIMEOUT_S``) is stopped. With
``X-Tollgate-Partial: allow`` the caller gets what was generated, with
``finish_reason: "length"`` and ``X-Tollgate-Partial: timeout``, billed as
produced; without it the answer is a 504 and the attempt is recorded as
failed. Failures before the first token are the caller's HTTP error (an
engine's own refusal of a parameter is a 400 naming it); after the first
streamed token they travel in the stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from metering.models import UsageRecord
from metering.tracing import request_attributes, tracer

from .. import errors
from ..engines.base import EngineError, EngineRejected, GenerationRequest, TextDelta
from ..flow.context import Attempt, RequestContext
from ..pools import PoolQueueFull, open_generation, retry_backoff_s
from ..resilience import RETRIES

TIMED_OUT = "timeout"


async def run(ctx: RequestContext) -> None:
    ctx.deadline = time.monotonic() + ctx.timeout_s
    await open_attempt(ctx, UsageRecord.AttemptKind.PRIMARY)


async def open_attempt(ctx: RequestContext, kind: str, exclude: frozenset[str] = frozenset()) -> None:
    """Open one attempt on ``ctx.served`` (the route's option, a downgrade's, or an escalation's)."""
    option = ctx.served
    sampling = ctx.request.to_sampling_params(option.estimate.max_tokens)
    if ctx.checks.needs_logprobs and not sampling.logprobs and "logprobs" in option.engine.supported_parameters:
        # A confidence check reads them; the answer carries them only when the caller asked (respond).
        sampling = dataclasses.replace(sampling, logprobs=True)
    attempt = Attempt(option=option, kind=kind, retry=len(ctx.tries), span=tracer.start_span(
        f"chat {option.model}", kind=SpanKind.CLIENT, context=trace.set_span_in_context(ctx.span),
        attributes=request_attributes(operation="chat", model=ctx.request.model, max_tokens=sampling.max_tokens,
                                      temperature=sampling.temperature, top_p=sampling.top_p,
                                      stream=ctx.request.stream),
    ))
    generation = GenerationRequest(request_id=ctx.request_id, model=option.model, messages=ctx.messages,
                                   sampling=sampling)
    try:
        attempt.stream = await open_generation(option.engine, generation, exclude)
    except PoolQueueFull as exc:
        _end_unstarted(attempt, "queue_full")
        raise errors.QueueFull(str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    except EngineError as exc:
        _end_unstarted(attempt, "engine_unavailable")
        retry_after = getattr(exc, "retry_after_s", None)
        raise errors.EngineUnavailable(f"The model `{option.model}` is unavailable: {exc}",
                                       headers={"Retry-After": str(retry_after)} if retry_after else None)
    ctx.attempts.append(attempt)


def _end_unstarted(attempt: Attempt, reason: str) -> None:
    # Nothing ran, so no usage row: the flow gives the reservation back.
    attempt.span.set_status(Status(StatusCode.ERROR, reason))
    attempt.span.end()


def _ended(attempt: Attempt, status: str, error_code: str = "") -> None:
    attempt.status, attempt.error_code = status, error_code
    attempt.result = attempt.stream.result
    attempt.finished = time.perf_counter()
    replica = getattr(attempt.stream, "replica", None)  # pooled streams say where the try ran
    if replica is not None:
        attempt.pool, attempt.replica = replica.pool_name, replica.label


async def _retry(ctx: RequestContext, failed: Attempt, exc: EngineError) -> bool:
    """Open a retry attempt for a try that failed before its first token, if that is safe and allowed."""
    pool = getattr(failed.stream, "pool", None)
    if not exc.retry_safe or pool is None or len(ctx.tries) >= ctx.max_attempts:
        return False
    if not pool.retry_budget.try_spend():
        RETRIES.labels(pool.name, "budget_exhausted").inc()
        return False
    RETRIES.labels(pool.name, "retried").inc()
    delay = retry_backoff_s(len(ctx.tries))
    if time.monotonic() + delay >= ctx.deadline:
        return False
    await asyncio.sleep(delay)
    tried = frozenset(a.replica for a in ctx.tries if a.replica)
    try:
        await open_attempt(ctx, UsageRecord.AttemptKind.RETRY, tried)
    except errors.OpenAIError:
        return False  # the pool is full or no replica is left: the caller gets the first failure
    return True


async def deltas(ctx: RequestContext) -> AsyncIterator[TextDelta]:
    """The answer's text deltas one by one (``batches``, flattened)."""
    batched = batches(ctx)
    try:
        async for batch in batched:
            for delta in batch:
                yield delta
    finally:
        await batched.aclose()


async def batches(ctx: RequestContext) -> AsyncIterator[list[TextDelta]]:
    """The answer's text deltas in lists, each what the engine had ready together (one read from a worker),
    retrying safe failures before the first one; marks each attempt's end.

    The deadline is checked as lists arrive (one clock read each, no timer task per token); an engine
    that sends nothing at all is bounded by its read timeout (TOLLGATE_ENGINE_READ_TIMEOUT_S).
    A client that leaves (CancelledError) is not handled here: the flow cancels the engine and settles
    in one shielded step (``abandon``).
    """
    sent = False
    while True:
        attempt = ctx.attempts[-1]
        iterator = attempt.stream.batches()
        try:
            async for batch in iterator:
                sent = True
                yield batch
                if time.monotonic() >= ctx.deadline:
                    await _timed_out(ctx, attempt, iterator)
                    return
        except EngineRejected as exc:
            _ended(attempt, UsageRecord.Status.ERROR, "engine_rejected")
            raise errors.InvalidRequest(str(exc), param=exc.param, code="engine_rejected")
        except EngineError as exc:
            _ended(attempt, UsageRecord.Status.ERROR, "engine_error")
            if not sent and await _retry(ctx, attempt, exc):
                continue
            raise errors.EngineUnavailable(f"The engine failed while generating: {exc}")
        except errors.OpenAIError:
            raise  # the deadline's own answer
        except Exception:
            await attempt.stream.cancel()
            _ended(attempt, UsageRecord.Status.ERROR, "internal_error")
            raise
        _ended(attempt, UsageRecord.Status.OK)
        return


async def _timed_out(ctx: RequestContext, attempt: Attempt, iterator) -> None:
    """The deadline passed: stop the engine; the caller gets what was made (when allowed) or a 504."""
    await attempt.stream.cancel()
    await iterator.aclose()
    if ctx.partial_allowed:
        # Billed as produced; the answer says it was cut, as a length limit would.
        _ended(attempt, UsageRecord.Status.OK)
        attempt.result.finish_reason = "length"
        ctx.response_headers["X-Tollgate-Partial"] = TIMED_OUT
        return
    _ended(attempt, UsageRecord.Status.ERROR, "generation_timeout")
    raise errors.GenerationTimeout(
        f"The generation ran past its {ctx.timeout_s:g} s deadline and was stopped; send "
        "`X-Tollgate-Partial: allow` to get what was generated by then.")


async def abandon(ctx: RequestContext) -> None:
    """The client left: stop the engine now; what it produced so far is billed as a cancelled attempt."""
    attempt = ctx.attempts[-1]
    if attempt.finished is not None:  # it had ended (failed, before a retry could start): nothing runs
        return
    await attempt.stream.cancel()
    _ended(attempt, UsageRecord.Status.CANCELLED, "client_disconnected")
