from datetime import datetime, timezone

from budgets.services import month_bounds


def test_month_bounds_follow_the_org_time_zone():
    # 02:00 UTC on Dec 1 is still November in New York.
    start, end = month_bounds(datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc), "America/New_York")
    assert (start.month, start.day, end.month) == (11, 1, 12)
    assert start.astimezone(timezone.utc) == datetime(2026, 11, 1, 4, 0, tzinfo=timezone.utc)


def test_december_rolls_over_to_january():
    start, end = month_bounds(datetime(2026, 12, 15, tzinfo=timezone.utc), "UTC")
    assert (start.year, start.month, end.year, end.month) == (2026, 12, 2027, 1)
