from decimal import ROUND_HALF_UP, Decimal

from django import template

register = template.Library()


@register.filter
def usd(amount) -> str:
    """Dollars readable at any scale: cents for real money, more digits for fractions of a cent.

    A single LLM request often costs a few millionths of a dollar; "$0.00" would hide it.
    """
    if amount is None:
        return "—"
    amount = Decimal(amount)
    magnitude = abs(amount)
    if magnitude == 0:
        return "$0.00"
    if magnitude >= Decimal("0.01"):
        places = Decimal("0.01")
    elif magnitude >= Decimal("0.0001"):
        places = Decimal("0.0001")
    else:
        places = Decimal("0.000001")
    rounded = amount.quantize(places, rounding=ROUND_HALF_UP)
    if rounded == 0:
        return "<$0.000001" if amount > 0 else "$0.00"
    return f"${rounded:,}"


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
