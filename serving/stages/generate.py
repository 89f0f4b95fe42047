"""Generate: run the request on the engine it was routed (or downgraded) to, as an attempt.

``run`` opens the attempt: the pool's admission queue (a full queue is a 429
with Retry-After before anything is spent) and the engine's stream.
``collect`` and ``relay`` then consume it, whole or delta by delta, and
mark how the attempt ended; the flow settles it. Failures before the first
token are the caller's HTTP error (an engine's own refusal of a parameter is
a 400 naming it); after the first streamed token they travel in the stream.
(Retries, failover to another pool and escalation will add attempts here.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from metering.models import UsageRecord
from metering.tracing import request_attributes, tracer

from .. import errors
from ..engines.base import EngineError, EngineRejected, GenerationRequest, TextDelta
from ..flow.context import Attempt, RequestContext
from ..pools import PoolQueueFull, open_generation


async def run(ctx: RequestContext) -> None:
    option = ctx.served
    sampling = ctx.request.to_sampling_params(option.estimate.max_tokens)
    attempt = Attempt(option=option, span=tracer.start_span(
        f"chat {option.model}", kind=SpanKind.CLIENT, context=trace.set_span_in_context(ctx.span),
        attributes=request_attributes(operation="chat", model=ctx.request.model, max_tokens=sampling.max_tokens,
                                      temperature=sampling.temperature, top_p=sampling.top_p,
                                      stream=ctx.request.stream),
    ))
    generation = GenerationRequest(request_id=ctx.request_id, model=option.model, messages=ctx.messages,
                                   sampling=sampling)
    try:
        attempt.stream = await open_generation(option.engine, generation)
    except PoolQueueFull as exc:
        _end_unstarted(attempt, "queue_full")
        raise errors.QueueFull(str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    except EngineError as exc:
        _end_unstarted(attempt, "engine_unavailable")
        raise errors.EngineUnavailable(f"The model `{option.model}` is unavailable: {exc}")
    ctx.attempts.append(attempt)


def _end_unstarted(attempt: Attempt, reason: str) -> None:
    # Nothing ran, so no usage row: the flow gives the reservation back.
    attempt.span.set_status(Status(StatusCode.ERROR, reason))
    attempt.span.end()


def _ended(attempt: Attempt, status: str, error_code: str = "") -> None:
    attempt.status, attempt.error_code = status, error_code
    attempt.result = attempt.stream.result


async def deltas(attempt: Attempt) -> AsyncIterator[TextDelta]:
    """The attempt's text deltas; marks the attempt OK when the engine finishes, ERROR when it fails.

    A client that leaves (CancelledError) is not handled here: the flow
    cancels the engine and settles in one shielded step (``abandon``).
    """
    try:
        async for delta in attempt.stream:
            yield delta
    except EngineRejected as exc:
        _ended(attempt, UsageRecord.Status.ERROR, "engine_rejected")
        raise errors.InvalidRequest(str(exc), param=exc.param, code="engine_rejected")
    except EngineError as exc:
        _ended(attempt, UsageRecord.Status.ERROR, "engine_error")
        raise errors.EngineUnavailable(f"The engine failed while generating: {exc}")
    except Exception:
        await attempt.stream.cancel()
        _ended(attempt, UsageRecord.Status.ERROR, "internal_error")
        raise
    _ended(attempt, UsageRecord.Status.OK)


async def collect(attempt: Attempt) -> str:
    """The whole answer."""
    return "".join([delta.text async for delta in deltas(attempt)])


async def abandon(attempt: Attempt) -> None:
    """The client left: stop the engine now; what it produced so far is billed as a cancelled attempt."""
    await attempt.stream.cancel()
    _ended(attempt, UsageRecord.Status.CANCELLED, "client_disconnected")
