"""Embed: the embedding pool's admission queue, a replica (failing over a dead one), the vectors, as an attempt."""

from __future__ import annotations

from metering.models import UsageRecord

from .. import errors
from ..engines.base import EngineError
from ..flow.context import Attempt, RequestContext
from ..pools import PoolQueueFull


async def run(ctx: RequestContext) -> None:
    option = ctx.served
    deployment = option.engine
    attempt = Attempt(option=option, pool=deployment.pool.name)
    try:
        embedded = await deployment.embed(ctx.request.texts)
    except PoolQueueFull as exc:  # nothing ran: no attempt, the reservation goes back
        raise errors.QueueFull(str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    except EngineError as exc:
        attempt.status, attempt.error_code = UsageRecord.Status.ERROR, "engine_error"
        attempt.replica, attempt.queue_wait_s = getattr(exc, "replica", ""), getattr(exc, "queue_wait_s", 0.0)
        ctx.attempts.append(attempt)
        raise errors.EngineUnavailable(f"The embedding model is unavailable: {exc}")
    attempt.result, attempt.replica, attempt.queue_wait_s = embedded.result, embedded.replica, embedded.queue_wait_s
    ctx.attempts.append(attempt)
