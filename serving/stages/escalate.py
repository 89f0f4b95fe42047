"""Validate and escalate: return the cheap answer when it is good, else try one tier up, up to a limit.

``answer`` consumes the open attempt (``generate.deltas``), runs the checks
that apply (``serving.validation``: the routing policy's and the caller's),
and when the answer fails them and the request was routed (``model:
"auto"``: a named model is the caller's choice, never swapped), opens an
attempt of kind ``escalation`` on the next tier's cheapest model, up to the
policy's ``escalation_limit``. The escalation's worst case is held against
the budgets first (``budgets.extend_reservation``; no room, no escalation).
A discarded answer is billed as escalation cost. Headers:
``X-Tollgate-Validation: passed | failed:<check>`` and
``X-Tollgate-Escalated: <model>-><model>[->...]``.

Streamed requests that may escalate (routed, with checks and a limit) are
answered whole first and then sent as a stream: a check like JSON needs the
whole answer, and tokens already sent cannot be taken back. Streamed
requests that cannot escalate stream as they are generated.
"""

from __future__ import annotations

from budgets import services as budgets
from core.threads import on_thread_pool
from metering.models import UsageRecord
from routing import services as routing

from .. import validation
from ..engines.base import TextDelta
from ..flow.context import RequestContext
from . import generate, route


def may_escalate(ctx: RequestContext) -> bool:
    decision = ctx.route.decision if ctx.route else None
    return bool(decision and decision.requested == routing.AUTO and ctx.checks.any and ctx.escalation_limit > 0)


async def answer(ctx: RequestContext) -> list[TextDelta]:
    """The accepted answer's deltas (the last attempt's), after as many escalations as it took."""
    chain = [ctx.served.model]
    while True:
        deltas = [delta async for delta in generate.deltas(ctx)]
        attempt = ctx.tries[-1]
        reason = validation.failure(ctx.checks, "".join(d.text for d in deltas), attempt.result)
        if reason is None:
            if ctx.checks.any:
                ctx.response_headers["X-Tollgate-Validation"] = "passed"
            return deltas
        ctx.response_headers["X-Tollgate-Validation"] = f"failed:{reason}"
        if attempt.span is not None:
            attempt.span.set_attribute("tollgate.validation.failed", reason)
        if not may_escalate(ctx) or len(chain) > ctx.escalation_limit:
            return deltas
        option = await on_thread_pool(_held_escalation)(ctx, attempt.option)
        if option is None:
            return deltas
        attempt.discarded = True
        ctx.escalated_to = option
        chain.append(option.model)
        ctx.response_headers["X-Tollgate-Escalated"] = "->".join(chain)
        await generate.open_attempt(ctx, UsageRecord.AttemptKind.ESCALATION)


def _held_escalation(ctx: RequestContext, current):
    """The next tier's option, once its worst case is held as well (None: no stronger model, or no room)."""
    option = route.escalation_option(ctx, current)
    if option is None:
        return None
    tenant = ctx.tenant
    if ctx.reservation is not None and not budgets.extend_reservation(
            ctx.reservation, option.estimate, tenant.org_id, tenant.feature_id, tenant.api_key_id,
            tenant.user_id, ctx.received_at):
        return None
    return option


async def replayed(deltas: list[TextDelta]):
    """An answer already accepted, as the stream of deltas it was generated as (one batch: all are ready)."""
    yield deltas
