"""The cost model beyond token prices: GPU pool time, chargeback modes, cost components, savings.

Token prices live in `pricing`; this module turns an attempt's engine-seconds
into GPU cost at its pool's rate, decides what the org is charged in its
chargeback mode, splits the attempt's cost into base / retry / escalation,
prices counterfactual savings, and allocates a pool's whole cost (busy and
idle) over a period to the orgs that used it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from django.conf import settings
from django.db.models import Q, Sum

from core.memo import Memo

from .models import ChargebackMode, ChargebackPolicy, PoolRate, Price, UsageRecord
from .pricing import PER_MILLION, quantize_money

SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True)
class PoolCost:
    """A GPU pool's rate in force at one moment."""

    pool: str
    rate_id: int
    usd_per_gpu_hour: Decimal
    gpus: int
    gpus_per_replica: int

    def cost_of_engine_seconds(self, engine_seconds: float) -> Decimal:
        """GPU cost of a request that occupied one replica for `engine_seconds` (its share of the batch)."""
        seconds = Decimal(str(engine_seconds))
        return quantize_money(seconds * self.gpus_per_replica * self.usd_per_gpu_hour / SECONDS_PER_HOUR)


# Per web process (core/memo.py); edits in this process drop these at once (metering.signals).
_pool_rates: Memo[tuple[tuple[datetime, PoolCost], ...]] = Memo("pool rates")
_chargeback_modes: Memo[str] = Memo("chargeback modes")


def _load_pool_rates(pool: str) -> tuple[tuple[datetime, PoolCost], ...]:
    return tuple(
        (rate.effective_from, PoolCost(pool=rate.pool, rate_id=rate.pk, usd_per_gpu_hour=rate.usd_per_gpu_hour,
                                       gpus=rate.gpus, gpus_per_replica=rate.gpus_per_replica))
        for rate in PoolRate.objects.filter(pool=pool).order_by("-effective_from")
    )


def forget_cost_settings() -> None:
    _pool_rates.invalidate()
    _chargeback_modes.invalidate()


def pool_cost(pool: str, at: datetime) -> PoolCost | None:
    """The pool's rate in force at `at`, or None for a pool with no rate (its GPU time costs nothing)."""
    if not pool:
        return None
    for effective_from, rate in _pool_rates.get(pool, lambda: _load_pool_rates(pool)):
        if effective_from <= at:
            return rate
    return None


def gpu_cost_of_request(pool: str, engine_seconds: float, at: datetime) -> Decimal:
    rate = pool_cost(pool, at)
    return rate.cost_of_engine_seconds(engine_seconds) if rate else Decimal(0)


def chargeback_mode(org_id: int) -> str:
    def load() -> str:
        policy = ChargebackPolicy.objects.filter(organization_id=org_id).values_list("mode", flat=True).first()
        return policy or ChargebackMode.TOKENS

    return _chargeback_modes.get(org_id, load)


def savings_for_removed_tokens(price_id: int | None, tokens_saved: int) -> Decimal:
    """What `tokens_saved` input tokens would have cost at the attempt's price (counterfactual)."""
    if not tokens_saved or price_id is None:
        return Decimal(0)
    per_mtok = Price.objects.filter(pk=price_id).values_list("input_per_mtok", flat=True).first() or Decimal(0)
    return quantize_money(tokens_saved * per_mtok / PER_MILLION)


@dataclass(frozen=True)
class AttemptCharge:
    billed: Decimal
    base: Decimal
    retry: Decimal
    escalation: Decimal


def charge_for_attempt(*, mode: str, status: str, discarded: bool, cost_input: Decimal, cost_output: Decimal,
                       cost_gpu: Decimal) -> AttemptCharge:
    """Split one attempt's cost (in the org's chargeback unit) into exactly one component.

    - a failed attempt (status error) is retry cost: recorded, never billed;
    - an answer thrown away for a stronger model's is escalation cost: billed;
    - everything else that produced tokens is base cost: billed.
    Refusals cost nothing. billed == base + escalation.
    """
    zero = Decimal(0)
    if mode == ChargebackMode.TOKENS:
        amount = quantize_money(cost_input + cost_output)
    else:
        amount = quantize_money(cost_gpu)
    if status == UsageRecord.Status.REFUSED:
        return AttemptCharge(zero, zero, zero, zero)
    if status == UsageRecord.Status.ERROR:
        return AttemptCharge(billed=zero, base=zero, retry=amount, escalation=zero)
    if discarded:
        return AttemptCharge(billed=amount, base=zero, retry=zero, escalation=amount)
    return AttemptCharge(billed=amount, base=amount, retry=zero, escalation=zero)


# --- Pool statements: the whole pool cost, busy and idle, per org -------------


@dataclass
class PoolStatement:
    """A pool's cost over [start, end) and who pays it. Lines plus overhead add up to total exactly."""

    pool: str
    start: datetime
    end: datetime
    total: Decimal
    used: Decimal
    idle: Decimal
    charges: dict[int, Decimal] = field(default_factory=dict)  # org id -> GPU cost charged (used + idle share)
    idle_shares: dict[int, Decimal] = field(default_factory=dict)
    platform_overhead: Decimal = Decimal(0)


def pool_cost_over(pool: str, start: datetime, end: datetime) -> Decimal:
    """$/GPU-hour × GPUs × hours over [start, end), following rate changes inside the period."""
    rates = list(PoolRate.objects.filter(pool=pool, effective_from__lt=end).order_by("effective_from"))
    total = Decimal(0)
    for i, rate in enumerate(rates):
        span_start = max(rate.effective_from, start)
        span_end = min(rates[i + 1].effective_from, end) if i + 1 < len(rates) else end
        if span_end <= span_start:
            continue
        seconds = Decimal((span_end - span_start).total_seconds())
        total += rate.usd_per_gpu_hour * rate.gpus * seconds / SECONDS_PER_HOUR
    return quantize_money(total)


def _split_exactly(amount: Decimal, weights: dict[int, Decimal]) -> dict[int, Decimal]:
    """Split `amount` in proportion to `weights`, rounded to the money quantum, summing to `amount` exactly.

    Largest remainder: round every share down, then hand the left-over quanta
    to the largest remainders (ties by key, so the result is deterministic).
    """
    quantum = settings.MONEY_QUANTUM
    total_weight = sum(weights.values())
    if not weights or total_weight <= 0:
        return {key: Decimal(0) for key in weights}
    exact = {key: amount * w / total_weight for key, w in weights.items()}
    shares = {key: value.quantize(quantum, rounding=ROUND_DOWN) for key, value in exact.items()}
    left = int((amount - sum(shares.values())) / quantum)
    for key in sorted(exact, key=lambda k: (-(exact[k] - shares[k]), k))[:left]:
        shares[key] += quantum
    return shares


def pool_statement(pool: str, start: datetime, end: datetime) -> PoolStatement:
    """Charge a pool's whole cost over [start, end) to orgs by their chargeback modes.

    Each org's own GPU cost (its attempts' cost_gpu, failed ones included:
    they held the GPU too) is charged to it. Idle time (total minus all use)
    is shared out in proportion to use among orgs in `gpu_shared` mode; the
    shares of every other org stay with the platform as overhead. So with
    every org sharing, the charges add up to the pool's total cost exactly.
    """
    total = pool_cost_over(pool, start, end)
    used_by_org = {
        row["organization_id"]: row["used"]
        for row in UsageRecord.objects.filter(pool=pool, created_at__gte=start, created_at__lt=end)
        .values("organization_id").annotate(used=Sum("cost_gpu")).filter(~Q(used=0))
    }
    used = sum(used_by_org.values(), Decimal(0))
    idle = total - used
    sharing = set(
        ChargebackPolicy.objects.filter(organization_id__in=list(used_by_org), mode=ChargebackMode.GPU_SHARED)
        .values_list("organization_id", flat=True)
    )
    idle_by_org = _split_exactly(idle, used_by_org) if idle > 0 else {org: Decimal(0) for org in used_by_org}
    statement = PoolStatement(pool=pool, start=start, end=end, total=total, used=used, idle=idle)
    for org_id, org_used in used_by_org.items():
        share = idle_by_org[org_id] if org_id in sharing else Decimal(0)
        statement.idle_shares[org_id] = share
        statement.charges[org_id] = org_used + share
    statement.platform_overhead = total - sum(statement.charges.values(), Decimal(0))
    return statement
