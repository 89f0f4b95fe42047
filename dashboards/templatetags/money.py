from decimal import Decimal

from django import template

from core.money import format_usd

register = template.Library()


@register.filter
def usd(amount) -> str:
    """Dollars readable at any scale (core.money.format_usd, rounded): "$0.00" would hide a request's cost."""
    if amount is None:
        return "—"
    return format_usd(amount, rounded=True)


@register.filter
def percent(fraction) -> str:
    """0.125 -> "12.5%"; under 1 % two significant digits (a big pool is rarely busy); None -> "—"."""
    if fraction is None:
        return "—"
    pct = Decimal(str(fraction)) * 100
    if 0 < abs(pct) < Decimal("0.01"):
        return "<0.01%"
    if 0 < abs(pct) < 1:
        return f"{pct:.2g}%"
    return f"{pct:.1f}%"
