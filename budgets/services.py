"""Budget checks. The gateway asks `check_budgets` before it spends anything."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.db.models import Q

from metering.queries import ledger_spend

from .models import Budget


class BudgetExceeded(Exception):
    def __init__(self, status: "BudgetStatus"):
        self.status = status
        super().__init__(
            f"Budget for {status.scope_label} is exhausted: ${status.spent:.2f} of ${status.amount:.2f} spent "
            f"this period. It resets at {status.period_end.isoformat()}."
        )


@dataclass(frozen=True)
class BudgetStatus:
    budget_id: int
    scope_label: str
    feature: str
    amount: Decimal
    spent: Decimal
    period_start: datetime
    period_end: datetime

    @property
    def remaining(self) -> Decimal:
        return max(self.amount - self.spent, Decimal(0))

    @property
    def fraction_used(self) -> float:
        return float(self.spent / self.amount) if self.amount else 1.0

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.amount


def month_bounds(at: datetime, tz_name: str) -> tuple[datetime, datetime]:
    """The calendar month containing `at` in the org's time zone, as aware datetimes."""
    tz = zoneinfo.ZoneInfo(tz_name)
    local = at.astimezone(tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def budget_status(budget: Budget, at: datetime) -> BudgetStatus:
    start, end = month_bounds(at, budget.organization.timezone)
    feature = budget.feature.slug if budget.feature_id else ""
    return BudgetStatus(
        budget_id=budget.pk,
        scope_label=budget.scope_label,
        feature=feature,
        amount=budget.amount,
        spent=ledger_spend(budget.organization_id, start, end, feature=feature or None),
        period_start=start,
        period_end=end,
    )


def budget_statuses(org_id: int, at: datetime) -> list[BudgetStatus]:
    """Every active budget of the org with its spend so far (dashboards, admin)."""
    budgets = Budget.objects.select_related("organization", "feature").filter(organization_id=org_id, is_active=True)
    return [budget_status(b, at) for b in budgets]


def check_budgets(org_id: int, feature_id: int | None, at: datetime) -> list[BudgetStatus]:
    """Raise BudgetExceeded if any budget covering this request is exhausted.

    A request is covered by its org's budget and by its feature's budget.
    """
    covering = Q(feature__isnull=True)
    if feature_id is not None:
        covering |= Q(feature_id=feature_id)
    budgets = Budget.objects.select_related("organization", "feature").filter(
        covering, organization_id=org_id, is_active=True
    )
    statuses = [budget_status(b, at) for b in budgets]
    for status in statuses:
        if status.exhausted:
            raise BudgetExceeded(status)
    return statuses


acheck_budgets = sync_to_async(check_budgets)
