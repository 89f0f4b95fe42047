"""Reserve budget: hold the route's worst case against every covering budget, or refuse.

The budget decides under its locks: serve as routed, serve on the route's
precomputed cheaper alternative (a downgrade budget past its threshold), or
refuse (429 with Retry-After until the budget's period resets). A refusal
leaves a ledger row of status "refused", written when the flow settles.
"""

from __future__ import annotations

from django.utils import timezone

from budgets import services as budgets
from routing.services import route_header

from .. import errors
from ..flow.context import RequestContext


def run(ctx: RequestContext) -> None:
    tenant, route = ctx.tenant, ctx.route
    try:
        ctx.reservation = budgets.reserve_budget(
            ctx.request_id, tenant.org_id, tenant.feature_id, tenant.api_key_id, tenant.user_id,
            route.primary.estimate, ctx.received_at, quality_high=ctx.quality_high,
            alternatives=tuple(option.estimate for option in route.alternatives),
        )
    except (budgets.BudgetExceeded, budgets.QualityUnavailable) as exc:
        refusal = errors.BudgetExceeded if isinstance(exc, budgets.BudgetExceeded) else errors.QualityUnavailable
        ctx.refusal_code = refusal.code
        seconds = max(0, int((exc.status.period_end - timezone.now()).total_seconds()))
        raise refusal(str(exc), headers={"Retry-After": str(seconds)})
    if ctx.reservation.downgraded and route.decision is not None:
        # The budget capped the router's tier: the one decision the answer reports.
        ctx.response_headers["X-Tollgate-Route"] = route_header(ctx.reservation.estimate.entry.tier, "budget_cap")
    if ctx.reservation.downgraded and ctx.span is not None:
        ctx.span.set_attribute("tollgate.downgraded", True)
        ctx.span.set_attribute("tollgate.route.downgraded_to", ctx.reservation.estimate.entry.name)

