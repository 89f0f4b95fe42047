"""Money in Django admin: list columns as "$50.00" and inputs as "50.00", never "50.000000000".

Money columns hold nine decimal places (a request costs millionths of a dollar), which
Django shows as stored. These render through core.money's formatters instead.
"""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin

from .money import CENT, format_decimal, format_usd


def money_column(field: str, description: str | None = None, *, rounded: bool = False):
    """A list_display column showing model field `field` as dollars (sortable by the field)."""

    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def column(self, obj):
        amount = getattr(obj, field)
        return "—" if amount is None else format_usd(amount, rounded=rounded)

    column.__name__ = f"{field}_usd"
    return column


def plain_amount(value) -> str:
    """50.000000000 -> "50.00"; 0.000012000 -> "0.000012" (cents when the amount is whole cents)."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if amount == amount.quantize(CENT):
        return f"{amount.quantize(CENT)}"
    return format_decimal(amount)


class MoneyInput(forms.NumberInput):
    """A dollar amount input: shows 50.00, accepts any amount to the nano-dollar."""

    def __init__(self, attrs=None):
        super().__init__({"step": "any", "min": "0", "inputmode": "decimal", **(attrs or {})})

    def format_value(self, value):
        if value in (None, ""):
            return None
        try:
            return plain_amount(value)
        except (ArithmeticError, ValueError):
            return super().format_value(value)  # what the admin typed, shown back with its error
