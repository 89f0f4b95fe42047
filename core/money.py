"""Amounts of money as text, the one way Tollgate writes them (error messages, headers, emails, pages).

A single LLM request often costs a few millionths of a dollar, so neither "$0.00" nor
``str(Decimal)`` (which may answer ``6.0E-8``) will do:

* ``format_usd``: for people. Cents for real money, every significant digit for fractions of a
  cent: ``$1,234.56``, ``$0.00000006``. ``rounded=True`` (the dashboards) keeps a fraction of a
  cent short instead: ``$0.0046``, ``$0.000005``, ``<$0.000001``.
* ``format_decimal``: for programs (HTTP headers, payloads). Plain fixed-point, never exponent
  notation, trailing zeros trimmed: ``0.00000006``, ``0.0123``, ``12.5``, ``0``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
HUNDREDTH_OF_A_CENT = Decimal("0.0001")
MILLIONTH = Decimal("0.000001")


def format_decimal(amount: Decimal) -> str:
    """``amount`` in plain fixed-point with no trailing zeros: ``Decimal("6.0E-8")`` -> ``"0.00000006"``."""
    text = f"{_decimal(amount):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_usd(amount: Decimal, *, rounded: bool = False) -> str:
    """Dollars for people: ``$1,234.56`` from a cent up; below, ``$0.00000006`` (or rounded, see the module)."""
    amount = _decimal(amount)
    magnitude = abs(amount)
    if magnitude == 0:
        return "$0.00"
    if magnitude >= CENT:
        return f"${amount.quantize(CENT, rounding=ROUND_HALF_UP):,}"
    if not rounded:
        return f"${format_decimal(amount)}"
    places = HUNDREDTH_OF_A_CENT if magnitude >= HUNDREDTH_OF_A_CENT else MILLIONTH
    short = amount.quantize(places, rounding=ROUND_HALF_UP)
    if short == 0:  # under half a millionth
        return "<$0.000001" if amount > 0 else "$0.00"
    return f"${short}"


def _decimal(amount) -> Decimal:
    return amount if isinstance(amount, Decimal) else Decimal(str(amount))
