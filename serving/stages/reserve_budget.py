"""Reserve budget: hold the route's worst case against every covering budget, or refuse.

The budget decides under its locks: serve as routed, serve on the route's
precomputed cheaper alternative (a downgrade budget past its threshold), or
refuse (429 with Retry-After until the budget's period resets). A refusal
leaves a ledger row of status "refused", written when the flow settles.

On the web server's event loop (PostgreSQL) the common case, room left and
nothing downgrading, is held from the loop itself (``run_async``); the rest
runs on a thread (``run``).
"""

from __future__ import annotations

from django.utils import timezone

from budgets import services as budgets
from core import db
from core.memo import NotInMemory
from core.threads import on_thread_pool
from routing.services import route_header

from .. import errors
from ..flow.context import RequestContext


def run(ctx: RequestContext, *, fast_path: bool = True) -> None:
    tenant, route = ctx.tenant, ctx.route
    try:
        reservation = budgets.reserve_budget(
            ctx.request_id, tenant.org_id, tenant.feature_id, tenant.api_key_id, tenant.user_id,
            route.primary.estimate, ctx.received_at, quality_high=ctx.quality_high,
            alternatives=tuple(option.estimate for option in route.alternatives), fast_path=fast_path,
        )
    except (budgets.BudgetExceeded, budgets.QualityUnavailable) as exc:
        refusal = errors.BudgetExceeded if isinstance(exc, budgets.BudgetExceeded) else errors.QualityUnavailable
        ctx.refusal_code = refusal.code
        seconds = max(0, int((exc.status.period_end - timezone.now()).total_seconds()))
        raise refusal(str(exc), headers={"Retry-After": str(seconds)})
    _held(ctx, reservation)


_run_on_thread_pool = on_thread_pool(run)


async def run_async(ctx: RequestContext) -> bool:
    """Hold from the event loop; False when ``run`` must do it on a thread (nothing held then)."""
    if not db.async_ready():
        return False
    tenant = ctx.tenant
    try:
        reservation = await budgets.areserve_budget(ctx.request_id, tenant.org_id, tenant.feature_id,
                                                    tenant.api_key_id, tenant.user_id,
                                                    ctx.route.primary.estimate, ctx.received_at)
    except NotInMemory:  # raised before anything is held
        return False
    if reservation is None:  # downgrading or out of room: decided under the locks, on a thread
        await _run_on_thread_pool(ctx, fast_path=False)
    else:
        _held(ctx, reservation)
    return True


def _held(ctx: RequestContext, reservation: budgets.Reservation) -> None:
    ctx.reservation = reservation
    route = ctx.route
    if reservation.downgraded and route.decision is not None:
        # The budget capped the router's tier: the one decision the answer reports.
        ctx.response_headers["X-Tollgate-Route"] = route_header(reservation.estimate.entry.tier, "budget_cap")
    if reservation.downgraded and ctx.span is not None:
        ctx.span.set_attribute("tollgate.downgraded", True)
        ctx.span.set_attribute("tollgate.route.downgraded_to", reservation.estimate.entry.name)
