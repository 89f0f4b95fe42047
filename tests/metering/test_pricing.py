from decimal import Decimal

from metering.pricing import CatalogEntry, cost_of_tokens

ENTRY = CatalogEntry(name="m", tier=1, context_window=2048, price_id=1, input_per_mtok=Decimal("0.10"),
                     cached_input_per_mtok=Decimal("0.01"), output_per_mtok=Decimal("0.40"))


def test_cost_is_exact_decimal_per_million_tokens():
    cost = cost_of_tokens(ENTRY, input_tokens=1234, output_tokens=567)
    assert cost.input == Decimal("0.000123400")
    assert cost.output == Decimal("0.000226800")
    assert cost.total == Decimal("0.000350200")


def test_cached_input_tokens_are_priced_at_the_cached_rate():
    cost = cost_of_tokens(ENTRY, input_tokens=1000, output_tokens=0, cached_input_tokens=600)
    assert cost.input == Decimal("0.000046000")  # 400 × 0.10 + 600 × 0.01, per 1M


def test_a_billion_tokens_do_not_lose_a_cent():
    cost = cost_of_tokens(ENTRY, input_tokens=10**9, output_tokens=10**9)
    assert cost.total == Decimal("500.000000000")
