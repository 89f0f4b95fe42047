from decimal import Decimal

import pytest

from core.money import format_decimal, format_usd
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
    assert format_usd(amount, rounded=True) == shown  # the filter is core.money's rounded form


def test_no_amount_is_a_dash():
    assert usd(None) == "—"


@pytest.mark.parametrize("amount, shown", [
    (Decimal("1234.5"), "$1,234.50"),
    (Decimal("1234567.891"), "$1,234,567.89"),
    (Decimal("0.0123"), "$0.01"),
    (Decimal("0.004567"), "$0.004567"),  # a fraction of a cent keeps every digit
    (Decimal("6.0E-8"), "$0.00000006"),  # never exponent notation
    (Decimal("0.000000060"), "$0.00000006"),
    (Decimal("0"), "$0.00"),
    (Decimal("0E-9"), "$0.00"),
])
def test_messages_show_money_exactly_below_a_cent(amount, shown):
    assert format_usd(amount) == shown


@pytest.mark.parametrize("amount, written", [
    (Decimal("6.0E-8"), "0.00000006"),
    (Decimal("0.000000060"), "0.00000006"),
    (Decimal("0.0123"), "0.0123"),
    (Decimal("0.012300000"), "0.0123"),
    (Decimal("12.500000000"), "12.5"),
    (Decimal("1E+3"), "1000"),
    (Decimal("100"), "100"),
    (Decimal("0"), "0"),
    (Decimal("0E-9"), "0"),
    (Decimal("-0"), "0"),
    (Decimal("-0.00000006"), "-0.00000006"),
])
def test_headers_get_plain_decimals_without_exponent_or_trailing_zeros(amount, written):
    assert format_decimal(amount) == written
    assert Decimal(written) == amount  # the same amount, exactly


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
