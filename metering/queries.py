"""Read side of metering: ledger sums (PostgreSQL) and analytics (ClickHouse).

Other apps read usage only through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Sum

from .clickhouse import get_client
from .models import UsageRecord


def ledger_spend(org_id: int, start: datetime, end: datetime, feature: str | None = None) -> Decimal:
    """Billed spend in [start, end) from the durable ledger (exact, includes unshipped rows)."""
    rows = UsageRecord.objects.filter(organization_id=org_id, created_at__gte=start, created_at__lt=end)
    if feature:
        rows = rows.filter(feature=feature)
    return rows.aggregate(total=Sum("cost_total"))["total"] or Decimal(0)


# --- ClickHouse: dashboards -------------------------------------------------
# usage_events is a ReplacingMergeTree: FINAL makes a replayed batch count once.


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    refused: int


def usage_totals(org_id: int, start: datetime, end: datetime) -> UsageTotals:
    result = get_client().query(
        """
        SELECT countIf(status != 'refused'), sum(input_tokens), sum(output_tokens), sum(cost_total),
               countIf(status = 'refused')
        FROM usage_events FINAL
        WHERE org_id = {org:UInt64} AND timestamp >= {start:DateTime64(6)} AND timestamp < {end:DateTime64(6)}
        """,
        parameters={"org": org_id, "start": start, "end": end},
    )
    requests, input_tokens, output_tokens, cost, refused = result.result_rows[0]
    return UsageTotals(
        requests=int(requests),
        input_tokens=int(input_tokens or 0),
        output_tokens=int(output_tokens or 0),
        cost=Decimal(cost or 0),
        refused=int(refused),
    )


def spend_by_day(org_id: int, start: datetime, end: datetime, tz: str = "UTC") -> list[tuple]:
    """(day in the org's time zone, cost) rows, oldest first."""
    result = get_client().query(
        """
        SELECT toDate(timestamp, {tz:String}) AS day, sum(cost_total)
        FROM usage_events FINAL
        WHERE org_id = {org:UInt64} AND timestamp >= {start:DateTime64(6)} AND timestamp < {end:DateTime64(6)}
        GROUP BY day ORDER BY day
        """,
        parameters={"org": org_id, "start": start, "end": end, "tz": tz},
    )
    return [(day, Decimal(cost)) for day, cost in result.result_rows]


_GROUPABLE = {"feature": "feature", "model": "model_served"}


def spend_by(dimension: str, org_id: int, start: datetime, end: datetime) -> list[dict]:
    """Spend, requests and tokens grouped by `feature` or `model`, largest spend first."""
    column = _GROUPABLE[dimension]
    result = get_client().query(
        f"""
        SELECT {column} AS key, sum(cost_total) AS cost, count() AS requests,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
        FROM usage_events FINAL
        WHERE org_id = {{org:UInt64}} AND timestamp >= {{start:DateTime64(6)}} AND timestamp < {{end:DateTime64(6)}}
              AND status != 'refused'
        GROUP BY key ORDER BY cost DESC, key
        """,
        parameters={"org": org_id, "start": start, "end": end},
    )
    return [
        {"key": key or "(none)", "cost": Decimal(cost), "requests": int(n), "input_tokens": int(i), "output_tokens": int(o)}
        for key, cost, n, i, o in result.result_rows
    ]
