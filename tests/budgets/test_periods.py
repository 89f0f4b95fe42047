from datetime import datetime, timezone
from decimal import Decimal

import pytest

from budgets.models import Budget
from budgets.periods import budget_window, day_bounds, week_bounds
from budgets.services import month_bounds


def test_month_bounds_follow_the_org_time_zone():
    # 02:00 UTC on Dec 1 is still November in New York.
    start, end = month_bounds(datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc), "America/New_York")
    assert (start.month, start.day, end.month) == (11, 1, 12)
    assert start.astimezone(timezone.utc) == datetime(2026, 11, 1, 4, 0, tzinfo=timezone.utc)


def test_december_rolls_over_to_january():
    start, end = month_bounds(datetime(2026, 12, 15, tzinfo=timezone.utc), "UTC")
    assert (start.year, start.month, end.year, end.month) == (2026, 12, 2027, 1)


def test_a_day_is_local_midnight_to_midnight_even_across_a_dst_change():
    # Nov 1 2026 is 25 hours long in New York (clocks go back).
    start, end = day_bounds(datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc), "America/New_York")
    assert start.astimezone(timezone.utc) == datetime(2026, 11, 1, 4, 0, tzinfo=timezone.utc)
    assert end.astimezone(timezone.utc) == datetime(2026, 11, 2, 5, 0, tzinfo=timezone.utc)


def test_a_week_runs_monday_to_monday():
    start, end = week_bounds(datetime(2026, 11, 25, 15, 0, tzinfo=timezone.utc), "UTC")  # a Wednesday
    assert (start, end) == (datetime(2026, 11, 23, tzinfo=timezone.utc), datetime(2026, 11, 30, tzinfo=timezone.utc))


@pytest.mark.django_db
def test_a_fixed_range_budget_covers_only_its_range(make_tenant):
    tenant = make_tenant("acme")
    budget = Budget(organization=tenant.org, amount=Decimal("1"), period=Budget.Period.FIXED,
                    starts_at=datetime(2026, 11, 10, tzinfo=timezone.utc),
                    ends_at=datetime(2026, 11, 20, tzinfo=timezone.utc))
    assert budget_window(budget, datetime(2026, 11, 9, tzinfo=timezone.utc)) is None
    assert budget_window(budget, datetime(2026, 11, 15, tzinfo=timezone.utc)) == (budget.starts_at, budget.ends_at)
    assert budget_window(budget, datetime(2026, 11, 20, tzinfo=timezone.utc)) is None
