"""Read-only sums over the usage ledger for one budget's scope (the source counters are rebuilt from)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Q, Sum

from metering.models import UsageRecord

from .models import Budget


def _scope_rows(budget: Budget, start: datetime, end: datetime):
    rows = UsageRecord.objects.filter(organization_id=budget.organization_id, created_at__gte=start,
                                      created_at__lt=end)
    if budget.feature_id:
        rows = rows.filter(feature=budget.feature.slug)
    elif budget.api_key_id:
        rows = rows.filter(api_key_id=budget.api_key_id)
    elif budget.user_id:
        rows = rows.filter(user_id=budget.user_id)
    return rows


def scope_spend(budget: Budget, start: datetime, end: datetime) -> Decimal:
    """Billed spend of the budget's scope with created_at in [start, end)."""
    return _scope_rows(budget, start, end).aggregate(total=Sum("cost_total"))["total"] or Decimal(0)


def scope_activity(budget: Budget, start: datetime, end: datetime) -> dict:
    """Spend, downgraded requests and budget refusals of the scope in [start, end)."""
    return _scope_rows(budget, start, end).aggregate(
        spent=Sum("cost_total"),
        downgraded=Count("pk", filter=Q(downgraded=True)),
        refused=Count("pk", filter=Q(status=UsageRecord.Status.REFUSED)),
    )
