from decimal import Decimal

import pytest

from dashboards.templatetags.money import usd


@pytest.mark.parametrize("amount, shown", [
    (Decimal("1234.5"), "$1,234.50"),
    (Decimal("0.5"), "$0.50"),
    (Decimal("0.0123"), "$0.01"),
    (Decimal("0.004567"), "$0.0046"),
    (Decimal("0.000004567"), "$0.000005"),
    (Decimal("0.0000000004"), "<$0.000001"),
    (Decimal("0"), "$0.00"),
])
def test_small_amounts_stay_visible(amount, shown):
    assert usd(amount) == shown


@pytest.mark.parametrize("fraction, shown", [
    (0.25, "25.0%"),
    (2 / 7, "28.6%"),
    (0.0064, "0.64%"),  # a large pool is rarely busy: small shares keep two significant digits
    (1e-8, "<0.01%"),
    (0, "0.0%"),
    (None, "—"),  # nothing to divide by
])
def test_shares_read_as_percentages(fraction, shown):
    from dashboards.templatetags.money import percent

    assert percent(fraction) == shown
