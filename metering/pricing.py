"""The cost function. Money is Decimal from the price book to the statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

from core.memo import Memo

from .models import CatalogModel, Price

PER_MILLION = Decimal(1_000_000)


class UnknownModel(Exception):
    def __init__(self, name: str):
        super().__init__(f"The model `{name}` does not exist or you do not have access to it.")
        self.name = name


@dataclass(frozen=True)
class CatalogEntry:
    """A model as the gateway needs it at one moment: its limits and the price in force."""

    name: str
    tier: int
    context_window: int
    price_id: int
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    output_per_mtok: Decimal
    batch_discount_percent: Decimal = Decimal(50)


@dataclass(frozen=True)
class TokenCost:
    input: Decimal
    output: Decimal

    @property
    def total(self) -> Decimal:
        return self.input + self.output


def quantize_money(amount: Decimal) -> Decimal:
    return amount.quantize(settings.MONEY_QUANTUM, rounding=ROUND_HALF_UP)


# Each model's price book (every price row, newest first), per web process: see core/memo.py.
# Price and catalog edits in this process drop it at once (metering.signals).
_price_books: Memo[tuple[tuple[datetime, CatalogEntry], ...]] = Memo("price books")


def _load_price_book(model_name: str) -> tuple[tuple[datetime, CatalogEntry], ...]:
    prices = (Price.objects.select_related("model").filter(model__name=model_name, model__is_active=True)
              .order_by("-effective_from"))
    return tuple(
        (price.effective_from, CatalogEntry(
            name=price.model.name,
            tier=price.model.tier,
            context_window=price.model.context_window,
            price_id=price.pk,
            input_per_mtok=price.input_per_mtok,
            cached_input_per_mtok=price.cached_input_per_mtok,
            output_per_mtok=price.output_per_mtok,
            batch_discount_percent=price.batch_discount_percent,
        ))
        for price in prices
    )


def forget_price_books() -> None:
    _price_books.invalidate()


def catalog_entry(model_name: str, at: datetime) -> CatalogEntry:
    """The active model called `model_name` with the price effective at `at`.

    Raises UnknownModel when the model is missing, inactive or has no price yet
    (an unpriced model is never served for free). Every price row is kept, so a
    price that takes effect later applies from its moment without a reload.
    """
    book = _price_books.get(model_name, lambda: _load_price_book(model_name), store=bool)
    for effective_from, entry in book:
        if effective_from <= at:
            return entry
    raise UnknownModel(model_name)


def cost_of_tokens(
    entry: CatalogEntry, *, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0
) -> TokenCost:
    """Price of one attempt's tokens. Cached input tokens are part of input_tokens."""
    uncached = input_tokens - cached_input_tokens
    input_cost = (uncached * entry.input_per_mtok + cached_input_tokens * entry.cached_input_per_mtok) / PER_MILLION
    output_cost = output_tokens * entry.output_per_mtok / PER_MILLION
    return TokenCost(input=quantize_money(input_cost), output=quantize_money(output_cost))


def at_batch_discount(entry: CatalogEntry, cost: TokenCost) -> TokenCost:
    """``cost`` for a Batch API line: each part less the price's batch discount, rounded as any cost is."""
    keep = (Decimal(100) - entry.batch_discount_percent) / Decimal(100)
    return TokenCost(input=quantize_money(cost.input * keep), output=quantize_money(cost.output * keep))


def active_catalog() -> list[CatalogModel]:
    return list(CatalogModel.objects.filter(is_active=True, prices__isnull=False).distinct().order_by("tier", "name"))
