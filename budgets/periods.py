"""Period windows: which stretch of time a budget counts spend in, in the org's time zone."""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

from .models import Budget


def month_bounds(at: datetime, tz_name: str) -> tuple[datetime, datetime]:
    """The calendar month containing `at` in the org's time zone, as aware datetimes."""
    tz = zoneinfo.ZoneInfo(tz_name)
    local = at.astimezone(tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def day_bounds(at: datetime, tz_name: str) -> tuple[datetime, datetime]:
    local = at.astimezone(zoneinfo.ZoneInfo(tz_name))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # Aware + timedelta is wall-clock arithmetic in zoneinfo: the next local midnight, DST or not.
    return start, (start + timedelta(days=1)).replace(hour=0)


def week_bounds(at: datetime, tz_name: str) -> tuple[datetime, datetime]:
    """Monday 00:00 to the next Monday 00:00, local time."""
    day_start, _ = day_bounds(at, tz_name)
    start = day_start - timedelta(days=day_start.weekday())
    return start, start + timedelta(days=7)


def period_bounds(budget: Budget, at: datetime) -> tuple[datetime, datetime] | None:
    """The budget's period containing `at`, or None when a fixed range does not cover `at`."""
    tz_name = budget.organization.timezone
    if budget.period == Budget.Period.DAILY:
        return day_bounds(at, tz_name)
    if budget.period == Budget.Period.WEEKLY:
        return week_bounds(at, tz_name)
    if budget.period == Budget.Period.FIXED:
        if budget.starts_at is None or budget.ends_at is None or not budget.starts_at <= at < budget.ends_at:
            return None
        return budget.starts_at, budget.ends_at
    return month_bounds(at, tz_name)


def budget_window(budget: Budget, at: datetime) -> tuple[datetime, datetime] | None:
    """Where spend counts now: the period, started later if an admin reset the budget during it.

    The window start is the counter's key, so a reset or a new period gets a
    fresh counter while requests still in flight settle against the old one.
    """
    bounds = period_bounds(budget, at)
    if bounds is None:
        return None
    start, end = bounds
    if budget.reset_at is not None and start <= budget.reset_at < end and budget.reset_at <= at:
        start = budget.reset_at
    return start, end
