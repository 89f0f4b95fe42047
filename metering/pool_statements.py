"""Pool statements as finance reads them: a period, one line per org, platform overhead, the total.

`costs.pool_statement` does the allocation; this module names the period,
attaches org names and modes, and states the capacity the pool offered
(replica-seconds), so the command, the API and the staff overview print the
same lines. Everything here reads PostgreSQL only (the ledger and the pool
rates), never ClickHouse, so it works while an embedded server holds chDB.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from django.db.models import Sum

from tenants.models import Organization

from .costs import PoolStatement, chargeback_mode, pool_statement
from .models import PoolRate, UsageRecord


def month_period(value: str) -> tuple[datetime, datetime]:
    """'2026-11' -> [Nov 1, Dec 1) in UTC. Raises ValueError for anything else."""
    try:
        start = datetime.strptime(value, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"period must look like 2026-11, not {value!r}") from None
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def pool_replica_seconds(pool: str, start: datetime, end: datetime, rates: list | None = None) -> Decimal | None:
    """Replica-seconds the pool's paid GPUs offered over [start, end), or None for a pool with no rate.

    Replicas are GPUs ÷ GPUs per replica, following rate changes inside the
    period like `costs.pool_cost_over`. Engine-seconds are a request's share of
    one replica's time, so engine-seconds ÷ this is the pool's utilization. `rates`: the pool's
    PoolRate rows oldest first, when the caller already has them.
    """
    if rates is None:
        rates = list(PoolRate.objects.filter(pool=pool, effective_from__lt=end).order_by("effective_from"))
    else:  # the pool's rates read once by a caller asking for many spans (hour by hour)
        rates = [r for r in rates if r.effective_from < end]
    total = Decimal(0)
    covered = False
    for i, rate in enumerate(rates):
        span_start = max(rate.effective_from, start)
        span_end = min(rates[i + 1].effective_from, end) if i + 1 < len(rates) else end
        if span_end <= span_start:
            continue
        covered = True
        replicas = Decimal(rate.gpus) / Decimal(max(1, rate.gpus_per_replica))
        total += replicas * Decimal(str((span_end - span_start).total_seconds()))
    return total if covered else None


def utilization(engine_seconds: float, replica_seconds: Decimal | None) -> float | None:
    """Busy share of the capacity (0..1, or above 1 if more was used than the rate says was paid for)."""
    if not replica_seconds:
        return None
    return float(Decimal(str(engine_seconds)) / replica_seconds)


@dataclass(frozen=True)
class StatementLine:
    org_id: int
    org_slug: str
    org_name: str
    mode: str
    used: Decimal
    idle_share: Decimal
    charge: Decimal


@dataclass(frozen=True)
class PoolStatementReport:
    """A statement with named lines. sum(line.charge) + platform_overhead == total, exactly."""

    statement: PoolStatement
    lines: list[StatementLine]
    engine_seconds: float
    replica_seconds: Decimal | None

    @property
    def utilization(self) -> float | None:
        return utilization(self.engine_seconds, self.replica_seconds)


def pool_statement_report(pool: str, start: datetime, end: datetime) -> PoolStatementReport:
    statement = pool_statement(pool, start, end)
    orgs = {o.pk: o for o in Organization.objects.filter(pk__in=list(statement.charges))}
    lines = [
        StatementLine(
            org_id=org_id,
            org_slug=orgs[org_id].slug if org_id in orgs else str(org_id),
            org_name=orgs[org_id].name if org_id in orgs else str(org_id),
            mode=chargeback_mode(org_id),
            used=charge - statement.idle_shares.get(org_id, Decimal(0)),
            idle_share=statement.idle_shares.get(org_id, Decimal(0)),
            charge=charge,
        )
        for org_id, charge in statement.charges.items()
    ]
    lines.sort(key=lambda line: (-line.charge, line.org_slug))
    engine_seconds = (UsageRecord.objects.filter(pool=pool, created_at__gte=start, created_at__lt=end)
                      .aggregate(s=Sum("engine_seconds"))["s"] or 0.0)
    return PoolStatementReport(statement=statement, lines=lines, engine_seconds=float(engine_seconds),
                               replica_seconds=pool_replica_seconds(pool, start, end))
