"""Read side of metering: ledger sums (PostgreSQL) and analytics (ClickHouse).

Other apps read usage only through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Sum

from tenants.models import Organization

from . import pool_statements
from .clickhouse import get_client
from .models import UsageRecord


def ledger_spend(org_id: int, start: datetime, end: datetime, feature: str | None = None) -> Decimal:
    """Billed spend in [start, end) from the durable ledger (exact, includes unshipped rows)."""
    rows = UsageRecord.objects.filter(organization_id=org_id, created_at__gte=start, created_at__lt=end)
    if feature:
        rows = rows.filter(feature=feature)
    return rows.aggregate(total=Sum("cost_total"))["total"] or Decimal(0)


# --- ClickHouse: dashboards (read the hourly rollup; see usage_summary) ------


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    refused: int


DASHBOARD_MEASURES = ["requests", "refused", "input_tokens", "output_tokens", "cost_total"]


# Narrowing a dashboard read: feature, model, api_key_id, user_id (UsageFilter's fields of those names).
NARROWING = ("feature", "model", "api_key_id", "user_id")


def _narrowed(org_ids: tuple[int, ...] | None, start: datetime, end: datetime, tz: str = "UTC",
              **narrow) -> UsageFilter:
    unknown = set(narrow) - set(NARROWING)
    if unknown:
        raise ValueError(f"cannot narrow by {', '.join(sorted(unknown))}")
    return UsageFilter(start=start, end=end, org_ids=org_ids, tz=tz,
                       **{k: v for k, v in narrow.items() if v is not None})


def usage_totals(org_id: int, start: datetime, end: datetime, **narrow) -> UsageTotals:
    """Totals of one org over [start, end); `narrow`: feature, model, api_key_id, user_id (see NARROWING)."""
    (row,) = usage_summary(_narrowed((org_id,), start, end, **narrow), measures=DASHBOARD_MEASURES)
    return UsageTotals(requests=row["requests"], input_tokens=row["input_tokens"],
                       output_tokens=row["output_tokens"], cost=row["cost_total"], refused=row["refused"])


def spend_by_day(org_id: int, start: datetime, end: datetime, tz: str = "UTC", **narrow) -> list[tuple]:
    """(day in the org's time zone, cost) rows, oldest first."""
    rows = usage_summary(_narrowed((org_id,), start, end, tz, **narrow), ["day"], measures=["cost_total"])
    return sorted((row["day"], row["cost_total"]) for row in rows)


def spend_by_day_and(dimension: str, org_id: int, start: datetime, end: datetime, tz: str = "UTC",
                     **narrow) -> list[tuple]:
    """(day in `tz`, feature or model, cost) rows, oldest first: spend over time, stacked by `dimension`."""
    rows = usage_summary(_narrowed((org_id,), start, end, tz, **narrow), ["day", _GROUPABLE[dimension]],
                         measures=["cost_total"])
    return sorted((row["day"], row[_GROUPABLE[dimension]] or "(none)", row["cost_total"]) for row in rows)


_GROUPABLE = {"feature": "feature", "model": "model"}


def spend_by(dimension: str, org_id: int, start: datetime, end: datetime, **narrow) -> list[dict]:
    """Spend, requests and tokens grouped by `feature` or `model`, largest spend first."""
    rows = usage_summary(_narrowed((org_id,), start, end, **narrow), [_GROUPABLE[dimension]],
                         measures=DASHBOARD_MEASURES)
    return [
        {"key": row[_GROUPABLE[dimension]] or "(none)", "cost": row["cost_total"], "requests": row["requests"],
         "input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"]}
        for row in rows if row["requests"]
    ]


def top_spenders(dimension: str, org_id: int, start: datetime, end: datetime, *, limit: int = 10,
                 **narrow) -> list[dict]:
    """The org's largest spenders by API key (`key`) or user (`user`): id, label, spend, requests, tokens.

    Keys and users are not in the rollups, so this reads usage_events (one org's range: its own granules).
    Attempts without a key or user (id 0) are left out.
    """
    from django.contrib.auth import get_user_model

    from tenants.models import ApiKey

    if dimension not in ("key", "user"):
        raise ValueError(f"top spenders by {dimension!r}: give key or user")
    rows = [r for r in usage_summary(_narrowed((org_id,), start, end, **narrow), [dimension],
                                     measures=DASHBOARD_MEASURES, limit=limit + 1) if r[dimension]][:limit]
    ids = [r[dimension] for r in rows]
    if dimension == "key":
        labels = {k.pk: f"{k.name} ({k.prefix}…)" for k in ApiKey.objects.filter(pk__in=ids, organization_id=org_id)}
    else:
        labels = {u.pk: u.get_username() for u in get_user_model().objects.filter(pk__in=ids)}
    return [{"id": r[dimension], "label": labels.get(r[dimension], f"#{r[dimension]}"), "cost": r["cost_total"],
             "requests": r["requests"], "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"]}
            for r in rows]


# --- Usage analytics: daily rollup for whole days, hourly for whole hours, raw for the edges -------
#
# usage_daily and usage_hourly (SummingMergeTrees fed by materialized views)
# hold sums per UTC day / hour × org × feature × model × pool. A range is cut
# in up to three tiers: its whole UTC days read usage_daily, the whole hours
# around them usage_hourly, and the partial hours at either end usage_events
# (FINAL); so answers are exact to the nano-dollar and a 90-day range reads
# up to 24× fewer rows than from the hourly rollup alone. Filters or
# groupings the rollups do not carry (API key, user) read the raw table;
# hour groupings, days in a time zone other than UTC and one-org filters
# skip the daily tier (see DAILY_MIN_ORGS).

MEASURES = [
    "requests", "refused", "errors", "cache_hits", "input_tokens", "cached_input_tokens", "output_tokens",
    "tokens_saved", "engine_seconds", "cost_input", "cost_output", "cost_gpu", "cost_total", "cost_base",
    "cost_retry", "cost_escalation", "savings_cache", "savings_tokens",
]
MONEY_MEASURES = [m for m in MEASURES if m.startswith(("cost_", "savings_"))]

_RAW_MEASURES = {
    "requests": "countIf(status != 'refused')",
    "refused": "countIf(status = 'refused')",
    "errors": "countIf(status = 'error')",
    "cache_hits": "countIf(cache_hit)",
    "input_tokens": "sum(toUInt64(input_tokens))",
    "cached_input_tokens": "sum(toUInt64(cached_input_tokens))",
    "output_tokens": "sum(toUInt64(output_tokens))",
    "tokens_saved": "sum(toUInt64(tokens_saved))",
    "engine_seconds": "sum(engine_seconds)",
    **{m: f"sum(toDecimal128({m}, 9))" for m in MONEY_MEASURES},
}

# dimension -> (rollup expression, raw expression); None: the rollup does not carry it.
DIMENSIONS = {
    "org": ("org_id", "org_id"),
    "feature": ("feature", "feature"),
    "model": ("model_served", "model_served"),
    "model_requested": ("model_requested", "model_requested"),
    "pool": ("pool", "pool"),
    "hour": ("hour", "toStartOfHour(timestamp)"),
    "day": ("toDate(hour, {tz:String})", "toDate(timestamp, {tz:String})"),
    "key": (None, "api_key_id"),
    "user": (None, "user_id"),
    "cache_layer": (None, "cache_layer"),  # exact | semantic | embedding; blank: generated
}

# The daily tier pays off across many orgs (a staff view over 90 days reads up to 24× fewer rollup rows).
# One org's hourly rows, even for 90 days, fit in a few granules, and the extra subquery cost more than it
# saved (org dashboard p50 44 → 82 ms in bench/usage_queries.py), so a one-org filter stays on hourly.
DAILY_MIN_ORGS = 2

# dimension -> expression in usage_daily; None (or absent): the daily rollup cannot answer it.
# "day" only for UTC: another zone's day straddles two UTC days (see _daily_dimension).
DAILY_DIMENSIONS = {"org": "org_id", "feature": "feature", "model": "model_served",
                    "model_requested": "model_requested", "pool": "pool", "day": "day"}


@dataclass(frozen=True)
class UsageFilter:
    """Which usage to read. org_ids None means every org (staff); an empty list means none."""

    start: datetime
    end: datetime
    org_ids: tuple[int, ...] | None = None
    feature: str | None = None
    model: str | None = None
    pool: str | None = None
    api_key_id: int | None = None
    user_id: int | None = None
    tz: str = "UTC"

    @property
    def needs_raw(self) -> bool:
        return self.api_key_id is not None or self.user_id is not None


_TIME_TYPES = {"timestamp": "DateTime64(6, 'UTC')", "hour": "DateTime('UTC')", "day": "Date"}


def _where(f: UsageFilter, time_column: str, start_key: str, end_key: str, raw: bool,
           hole: tuple[str, str] | None = None) -> str:
    """The filter's WHERE clause over [start_key, end_key); `hole` leaves out a range read from a coarser tier."""
    kind = _TIME_TYPES[time_column]
    clauses = [f"{time_column} >= {{{start_key}:{kind}}}", f"{time_column} < {{{end_key}:{kind}}}"]
    if hole:
        clauses.append(f"({time_column} < {{{hole[0]}:{kind}}} OR {time_column} >= {{{hole[1]}:{kind}}})")
    if f.org_ids is not None:
        clauses.append("org_id IN {org_ids:Array(UInt64)}")
    if f.feature is not None:
        clauses.append("feature = {feature:String}")
    if f.model is not None:
        clauses.append("model_served = {model:String}")
    if f.pool is not None:
        clauses.append("pool = {pool:String}")
    if raw and f.api_key_id is not None:
        clauses.append("api_key_id = {api_key_id:UInt64}")
    if raw and f.user_id is not None:
        clauses.append("user_id = {user_id:UInt64}")
    return " AND ".join(clauses)


def _floor(at: datetime, unit: str) -> datetime:
    """`at` floored to the UTC hour or day (the rollups' buckets are UTC, whatever zone `at` is in)."""
    at = at.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0) if unit == "day" else at


def _ceil(at: datetime, unit: str) -> datetime:
    floor = _floor(at, unit)
    return floor if floor == at else floor + (timedelta(days=1) if unit == "day" else timedelta(hours=1))


def _daily_dimension(dimension: str, tz: str) -> str | None:
    if dimension == "day" and tz != "UTC":
        return None
    return DAILY_DIMENSIONS.get(dimension)


def _summary_sql(f: UsageFilter, group_by: list[str], use_rollup: bool,
                 measures: list[str] = MEASURES, use_daily: bool = True) -> tuple[str, dict]:
    params = {"start": f.start, "end": f.end, "tz": f.tz, "org_ids": list(f.org_ids or []),
              "feature": f.feature or "", "model": f.model or "", "pool": f.pool or "",
              "api_key_id": f.api_key_id or 0, "user_id": f.user_id or 0}
    dims_raw = [f"{DIMENSIONS[d][1]} AS {d}" for d in group_by]
    raw_select = ", ".join(dims_raw + [f"{_RAW_MEASURES[m]} AS {m}" for m in measures])
    rollup_measures = [f"sum({m}) AS {m}" for m in measures]
    group_clause = f"GROUP BY {', '.join(group_by)}" if group_by else ""
    parts = []
    if use_rollup:
        hours = _ceil(f.start, "hour"), _floor(f.end, "hour")
        if hours[0] < hours[1]:
            params.update(hour_start=hours[0], hour_end=hours[1])
            days = _ceil(f.start, "day"), _floor(f.end, "day")
            daily = (use_daily and days[0] < days[1] and (f.org_ids is None or len(f.org_ids) >= DAILY_MIN_ORGS)
                     and all(_daily_dimension(d, f.tz) for d in group_by))
            if daily:
                params.update(day_start=days[0].date(), day_end=days[1].date(), day_start_at=days[0],
                              day_end_at=days[1])
                daily_select = ", ".join([f"{_daily_dimension(d, f.tz)} AS {d}" for d in group_by] + rollup_measures)
                parts.append(f"SELECT {daily_select} FROM usage_daily "
                             f"WHERE {_where(f, 'day', 'day_start', 'day_end', raw=False)} {group_clause}")
            if not daily or hours != days:
                # Whole hours outside the whole days (both ends in one scan).
                hole = ("day_start_at", "day_end_at") if daily else None
                hourly_select = ", ".join([f"{DIMENSIONS[d][0]} AS {d}" for d in group_by] + rollup_measures)
                parts.append(f"SELECT {hourly_select} FROM usage_hourly "
                             f"WHERE {_where(f, 'hour', 'hour_start', 'hour_end', raw=False, hole=hole)} "
                             f"{group_clause}")
            if f.start < hours[0] or hours[1] < f.end:
                # Both partial hours in one scan of the raw table.
                parts.append(f"SELECT {raw_select} FROM usage_events FINAL WHERE "
                             f"{_where(f, 'timestamp', 'start', 'end', raw=True, hole=('hour_start', 'hour_end'))} "
                             f"{group_clause}")
    if not parts:
        parts.append(f"SELECT {raw_select} FROM usage_events FINAL "
                     f"WHERE {_where(f, 'timestamp', 'start', 'end', raw=True)} {group_clause}")
    outer = ", ".join(group_by + [f"sum({m}) AS {m}" for m in measures])
    sql = f"SELECT {outer} FROM ({' UNION ALL '.join(parts)}) {group_clause}"
    return sql, params


def _row_dict(names: list[str], row: tuple) -> dict:
    out = dict(zip(names, row))
    for m in MEASURES:
        if m not in out:
            continue
        if m in MONEY_MEASURES:
            out[m] = Decimal(out[m] or 0)
        elif m == "engine_seconds":
            out[m] = float(out[m] or 0)
        else:
            out[m] = int(out[m] or 0)
    return out


def usage_summary(f: UsageFilter, group_by: list[str] | tuple[str, ...] = (), *, limit: int | None = None,
                  offset: int = 0, use_rollup: bool = True, measures: list[str] | None = None,
                  use_daily: bool = True) -> list[dict]:
    """Usage measures grouped by `group_by` (names from DIMENSIONS), largest spend first.

    With no group_by: one row of totals. `measures` picks columns (default
    all; fewer read faster). use_rollup=False forces the raw table and
    use_daily=False the hourly rollup without the daily one (benchmarks and
    tests compare them).
    """
    group_by = list(group_by)
    measures = list(measures or MEASURES)
    if "cost_total" not in measures:
        measures.append("cost_total")  # the sort key
    for d in group_by:
        if d not in DIMENSIONS:
            raise ValueError(f"cannot group by {d!r}")
    rollup = use_rollup and not f.needs_raw and all(DIMENSIONS[d][0] is not None for d in group_by)
    if f.org_ids is not None and not f.org_ids:
        return []
    sql, params = _summary_sql(f, group_by, rollup, measures, use_daily)
    order = ["cost_total DESC"] + list(group_by)
    sql += " ORDER BY " + ", ".join(order)
    if limit is not None:
        sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
    result = get_client().query(sql, parameters=params)
    names = list(result.column_names)
    return [_row_dict(names, row) for row in result.result_rows]


def usage_summary_count(f: UsageFilter, group_by: list[str] | tuple[str, ...] = ()) -> int:
    """How many groups usage_summary would return (for pagination)."""
    group_by = list(group_by)
    if f.org_ids is not None and not f.org_ids:
        return 0
    if not group_by:
        return 1
    rollup = not f.needs_raw and all(DIMENSIONS[d][0] is not None for d in group_by)
    sql, params = _summary_sql(f, group_by, rollup, ["requests"])
    return int(get_client().query(f"SELECT count() FROM ({sql})", parameters=params).result_rows[0][0])


EVENT_COLUMNS = [
    "event_id", "request_id", "trace_id", "timestamp", "org_id", "org_slug", "feature", "api_key_id", "user_id",
    "model_requested", "model_served", "pool", "attempt_kind", "status", "input_tokens", "cached_input_tokens",
    "output_tokens", "tokens_saved", "engine_seconds", "cost_input", "cost_output", "cost_gpu", "cost_total",
    "chargeback_mode", "cost_base", "cost_retry", "cost_escalation", "savings_cache", "savings_tokens",
    "cache_hit", "cache_layer", "downgraded",
]


def usage_events(f: UsageFilter, *, limit: int, offset: int = 0) -> list[dict]:
    """Raw usage events (drill-down), newest first."""
    if f.org_ids is not None and not f.org_ids:
        return []
    sql, params = _events_sql(f)
    result = get_client().query(
        f"SELECT {', '.join(EVENT_COLUMNS)} {sql} ORDER BY timestamp DESC, event_id DESC "
        f"LIMIT {int(limit)} OFFSET {int(offset)}",
        parameters=params,
    )
    return [dict(zip(EVENT_COLUMNS, row)) for row in result.result_rows]


def usage_events_count(f: UsageFilter) -> int:
    if f.org_ids is not None and not f.org_ids:
        return 0
    sql, params = _events_sql(f)
    return int(get_client().query(f"SELECT count() {sql}", parameters=params).result_rows[0][0])


def _events_sql(f: UsageFilter) -> tuple[str, dict]:
    params = {"start": f.start, "end": f.end, "org_ids": list(f.org_ids or []), "feature": f.feature or "",
              "model": f.model or "", "pool": f.pool or "", "api_key_id": f.api_key_id or 0,
              "user_id": f.user_id or 0}
    return f"FROM usage_events FINAL WHERE {_where(f, 'timestamp', 'start', 'end', raw=True)}", params


# --- Reconciliation: the ledger against ClickHouse, per org -----------------------------


@dataclass(frozen=True)
class OrgReconciliation:
    org_id: int
    org_slug: str
    ledger_rows: int
    ledger_cost: Decimal
    pending_rows: int
    pending_cost: Decimal
    clickhouse_rows: int
    clickhouse_cost: Decimal
    rollup_cost: Decimal
    # The daily rollup's total, when the period is whole UTC days (else None: that rollup cannot cut it).
    daily_rollup_cost: Decimal | None = None

    @property
    def matches(self) -> bool:
        """ClickHouse (raw and both rollups) holds exactly the ledger's shipped rows."""
        shipped_rows = self.ledger_rows - self.pending_rows
        shipped_cost = self.ledger_cost - self.pending_cost
        return (self.clickhouse_rows == shipped_rows and self.clickhouse_cost == shipped_cost
                and self.rollup_cost == shipped_cost
                and self.daily_rollup_cost in (None, shipped_cost))


def reconcile(start: datetime, end: datetime) -> list[OrgReconciliation]:
    """Per-org totals over [start, end) from the ledger, usage_events (FINAL), usage_hourly and usage_daily."""
    from django.db.models import Count, Q

    ledger = {
        row["organization_id"]: row
        for row in UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .values("organization_id", "organization__slug")
        .annotate(rows=Count("event_id"), cost=Sum("cost_total"),
                  pending_rows=Count("event_id", filter=Q(shipped_at__isnull=True)),
                  pending_cost=Sum("cost_total", filter=Q(shipped_at__isnull=True)))
    }
    client = get_client()
    params = {"start": start, "end": end}
    raw = {org: (int(n), Decimal(c)) for org, n, c in client.query(
        "SELECT org_id, count(), sum(toDecimal128(cost_total, 9)) FROM usage_events FINAL "
        "WHERE timestamp >= {start:DateTime64(6, 'UTC')} AND timestamp < {end:DateTime64(6, 'UTC')} GROUP BY org_id",
        parameters=params).result_rows}
    # The rollup is hourly: a period given in whole hours (a month) reads it exactly.
    rollup = {org: Decimal(c) for org, c in client.query(
        "SELECT org_id, sum(cost_total) FROM usage_hourly "
        "WHERE hour >= {start:DateTime64(6, 'UTC')} AND hour < {end:DateTime64(6, 'UTC')} GROUP BY org_id",
        parameters=params).result_rows}
    daily = None
    if _whole_utc_days(start) and _whole_utc_days(end):
        daily = {org: Decimal(c) for org, c in client.query(
            "SELECT org_id, sum(cost_total) FROM usage_daily "
            "WHERE day >= toDate({start:DateTime64(6, 'UTC')}, 'UTC') AND day < toDate({end:DateTime64(6, 'UTC')}, 'UTC') "
            "GROUP BY org_id", parameters=params).result_rows}
    slugs = {org: row["organization__slug"] for org, row in ledger.items()}
    missing = set(raw) - set(slugs)
    if missing:
        slugs.update(dict(Organization.objects.filter(pk__in=missing).values_list("pk", "slug")))
    report = []
    for org_id in sorted(set(ledger) | set(raw) | set(rollup) | set(daily or ())):
        row = ledger.get(org_id, {})
        report.append(OrgReconciliation(
            org_id=org_id,
            org_slug=slugs.get(org_id, str(org_id)),
            ledger_rows=row.get("rows", 0),
            ledger_cost=row.get("cost") or Decimal(0),
            pending_rows=row.get("pending_rows", 0),
            pending_cost=row.get("pending_cost") or Decimal(0),
            clickhouse_rows=raw.get(org_id, (0, Decimal(0)))[0],
            clickhouse_cost=raw.get(org_id, (0, Decimal(0)))[1],
            rollup_cost=rollup.get(org_id, Decimal(0)),
            daily_rollup_cost=None if daily is None else daily.get(org_id, Decimal(0)),
        ))
    return report


def _whole_utc_days(moment: datetime) -> bool:
    utc = moment.astimezone(dt_timezone.utc)
    return utc.hour == utc.minute == utc.second == utc.microsecond == 0


# --- Cost components, cache hits and GPU time per pool (org dashboard, staff overview) ------------
#
# Read through usage_summary (rollups for whole days and hours, raw edges), so
# they agree with the totals above to the nano-dollar. Each page reads one
# grouping with every measure it needs and folds it here in Python (Decimal
# sums stay exact): one scan instead of one per panel. org_ids None: every org.

COMPONENT_MEASURES = ["requests", "errors", "cache_hits", "cost_total", "cost_base", "cost_retry",
                      "cost_escalation", "savings_cache", "savings_tokens"]
GPU_MEASURES = ["requests", "engine_seconds", "cost_gpu"]


@dataclass(frozen=True)
class CostComponents:
    """Where the money went. billed == base + escalation + unsplit; retry is recorded, savings are counterfactual.

    Every ledger row written by settlement splits its cost (cost_total == cost_base +
    cost_escalation). Rows written without the split (history imported or seeded
    before the components existed carry only cost_total) are still billed: their
    cost is `unsplit`, shown as its own component so the parts always add up to the bill.
    """

    requests: int
    answered: int
    cache_hits: int
    billed: Decimal
    base: Decimal
    retry: Decimal
    escalation: Decimal
    savings_cache: Decimal
    savings_tokens: Decimal

    @property
    def unsplit(self) -> Decimal:
        """Billed cost that no row assigned to base or escalation (zero for rows settlement wrote)."""
        return self.billed - self.base - self.escalation

    @property
    def cache_hit_rate(self) -> float | None:
        """Cache hits per answered attempt (refused and failed attempts never reach or fill the cache)."""
        return self.cache_hits / self.answered if self.answered else None


@dataclass(frozen=True)
class PoolUsage:
    """GPU time one pool spent on the selected orgs; capacity only when every org is selected."""

    pool: str
    requests: int
    engine_seconds: float
    cost_gpu: Decimal
    replica_seconds: Decimal | None = None

    @property
    def utilization(self) -> float | None:
        return pool_statements.utilization(self.engine_seconds, self.replica_seconds)


@dataclass(frozen=True)
class CostBreakdown:
    components: CostComponents
    pools: list[PoolUsage]


def _fold(rows: list[dict], key) -> dict:
    """Sum the measures of `rows` per key(row); keys in first-seen order."""
    folded: dict = {}
    for row in rows:
        into = folded.setdefault(key(row), {})
        for m in MEASURES:
            if m in row:
                into[m] = into.get(m, 0) + row[m]
    return folded


def _components(row: dict) -> CostComponents:
    money = {m: Decimal(row.get(m, 0)) for m in MONEY_MEASURES}
    requests, errors = row.get("requests", 0), row.get("errors", 0)
    return CostComponents(
        requests=requests, answered=requests - errors, cache_hits=row.get("cache_hits", 0),
        billed=money["cost_total"], base=money["cost_base"], retry=money["cost_retry"],
        escalation=money["cost_escalation"], savings_cache=money["savings_cache"],
        savings_tokens=money["savings_tokens"],
    )


def _pools(by_pool: dict, start: datetime, end: datetime, with_capacity: bool) -> list[PoolUsage]:
    pools = [
        PoolUsage(pool=pool, requests=row["requests"], engine_seconds=row["engine_seconds"],
                  cost_gpu=Decimal(row["cost_gpu"]),
                  replica_seconds=(pool_statements.pool_replica_seconds(pool, start, end)
                                   if with_capacity and pool else None))
        for pool, row in by_pool.items() if row["engine_seconds"] or row["cost_gpu"]
    ]
    return sorted(pools, key=lambda p: (-p.cost_gpu, -p.engine_seconds, p.pool))


def cost_breakdown(org_ids: tuple[int, ...] | None, start: datetime, end: datetime, *,
                   with_capacity: bool = False, **narrow) -> CostBreakdown:
    """Cost components and cache hits, and engine-seconds and GPU cost per pool (largest GPU cost first).

    with_capacity adds the replica-seconds each pool's rates say were paid for
    (utilization = engine-seconds ÷ replica-seconds); only meaningful for all orgs.
    """
    rows = usage_summary(_narrowed(org_ids, start, end, **narrow), ["pool"],
                         measures=COMPONENT_MEASURES + ["engine_seconds", "cost_gpu"])
    total = _fold(rows, lambda row: None).get(None, {})
    return CostBreakdown(components=_components(total),
                         pools=_pools(_fold(rows, lambda row: row["pool"]), start, end, with_capacity))


@dataclass(frozen=True)
class PlatformOverview:
    """The staff page: every org's spend, by org and by model, cost components, GPU time per pool."""

    by_org: list[dict]
    by_model: list[dict]
    components: CostComponents
    pools: list[PoolUsage]


def _spend_rows(folded: dict, names: dict | None = None) -> list[dict]:
    rows = [
        {"key": (names.get(key, str(key)) if names is not None else key) or "(none)", "cost": m["cost_total"],
         "requests": m["requests"], "input_tokens": m["input_tokens"], "output_tokens": m["output_tokens"],
         "retry": m["cost_retry"], "savings_cache": m["savings_cache"], "savings_tokens": m["savings_tokens"]}
        for key, m in folded.items() if m["requests"]
    ]
    return sorted(rows, key=lambda r: (-r["cost"], r["key"]))


def platform_overview(start: datetime, end: datetime) -> PlatformOverview:
    """One read grouped by org × model × pool (a few thousand rows at most), folded four ways."""
    measures = DASHBOARD_MEASURES + COMPONENT_MEASURES + GPU_MEASURES
    rows = usage_summary(UsageFilter(start=start, end=end), ["org", "model", "pool"],
                         measures=list(dict.fromkeys(measures)))
    by_org = _fold(rows, lambda row: row["org"])
    slugs = dict(Organization.objects.filter(pk__in=list(by_org)).values_list("pk", "slug"))
    return PlatformOverview(
        by_org=_spend_rows(by_org, slugs),
        by_model=_spend_rows(_fold(rows, lambda row: row["model"])),
        components=_components(_fold(rows, lambda row: None).get(None, {})),
        pools=_pools(_fold(rows, lambda row: row["pool"]), start, end, with_capacity=True),
    )


# --- Chargeback statement: one org, one period, lines per feature × model --------------------------

STATEMENT_MEASURES = ["requests", "errors", "input_tokens", "cached_input_tokens", "output_tokens", "engine_seconds",
                      "cost_gpu", "cost_base", "cost_escalation", "cost_retry", "cost_total"]


@dataclass(frozen=True)
class StatementLine:
    feature: str
    model: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    engine_seconds: float
    cost_gpu: Decimal
    base: Decimal
    escalation: Decimal
    retry: Decimal  # recorded, not billed
    billed: Decimal

    @property
    def unsplit(self) -> Decimal:
        """Billed cost of rows that carry only a total (see CostComponents.unsplit)."""
        return self.billed - self.base - self.escalation


@dataclass(frozen=True)
class Statement:
    org_id: int
    start: datetime
    end: datetime
    lines: list[StatementLine]
    total: StatementLine


def _statement_line(feature: str, model: str, m: dict) -> StatementLine:
    return StatementLine(
        feature=feature, model=model, requests=m.get("requests", 0), input_tokens=m.get("input_tokens", 0),
        cached_input_tokens=m.get("cached_input_tokens", 0), output_tokens=m.get("output_tokens", 0),
        engine_seconds=float(m.get("engine_seconds", 0.0)), cost_gpu=Decimal(m.get("cost_gpu", 0)),
        base=Decimal(m.get("cost_base", 0)), escalation=Decimal(m.get("cost_escalation", 0)),
        retry=Decimal(m.get("cost_retry", 0)), billed=Decimal(m.get("cost_total", 0)))


def chargeback_statement(org_id: int, start: datetime, end: datetime) -> Statement:
    """What one org is charged over [start, end): a line per feature × model (largest first) and the total.

    Read through usage_summary like the usage API, so each line and the total equal
    `/api/usage/?group_by=feature,model` for the same period to the nano-dollar.
    """
    rows = usage_summary(UsageFilter(start=start, end=end, org_ids=(org_id,)), ["feature", "model"],
                         measures=STATEMENT_MEASURES)
    rows = [r for r in rows if r["requests"] or r["cost_total"] or r["cost_retry"]]
    lines = [_statement_line(r["feature"] or "(none)", r["model"] or "(none)", r) for r in rows]
    total = _fold(rows, lambda row: None).get(None, {})
    return Statement(org_id=org_id, start=start, end=end, lines=lines, total=_statement_line("", "", total))


# --- Request log (drill-down): attempts newest first, and one request's attempts from the ledger ----


def request_log(org_id: int, start: datetime, end: datetime, *, limit: int, offset: int = 0,
                **narrow) -> tuple[int, list[dict]]:
    """(how many attempts match, one page of them newest first) from usage_events; `narrow` as usage_totals."""
    f = _narrowed((org_id,), start, end, **narrow)
    return usage_events_count(f), usage_events(f, limit=limit, offset=offset)


def request_attempts(org_id: int, request_id: str) -> list[UsageRecord]:
    """Every ledger row (attempt) of one request of one org, in the order they happened.

    Read from the ledger (PostgreSQL), not ClickHouse: it is exact, includes rows not
    shipped yet, and carries what the analytics table does not (replica, errors, timings).
    """
    return list(UsageRecord.objects.filter(organization_id=org_id, request_id=request_id)
                .order_by("created_at", "retry_attempt", "event_id"))


# --- Retries and escalations: what failed attempts and replaced answers cost, per day and per model ------


@dataclass(frozen=True)
class RetryEscalationRow:
    key: object  # a day (in the filter's time zone) or a model name
    requests: int
    errors: int
    retry: Decimal  # recorded, not billed
    escalation: Decimal  # billed
    billed: Decimal

    @property
    def escalation_share(self) -> float | None:
        """Escalation's share of what was billed."""
        return float(self.escalation / self.billed) if self.billed else None

    @property
    def retry_share(self) -> float | None:
        """Retry cost against what was billed (how much more the failures would have added)."""
        return float(self.retry / self.billed) if self.billed else None


@dataclass(frozen=True)
class RetriesAndEscalations:
    by_day: list[RetryEscalationRow]
    by_model: list[RetryEscalationRow]
    total: RetryEscalationRow


def retries_and_escalations(org_id: int, start: datetime, end: datetime, tz: str = "UTC",
                            **narrow) -> RetriesAndEscalations:
    """One read grouped by day × model, folded by day (oldest first) and by model (largest retry + escalation)."""
    rows = usage_summary(_narrowed((org_id,), start, end, tz, **narrow), ["day", "model"],
                         measures=["requests", "errors", "cost_retry", "cost_escalation", "cost_total"])

    def row(key, m) -> RetryEscalationRow:
        return RetryEscalationRow(key=key, requests=m.get("requests", 0), errors=m.get("errors", 0),
                                  retry=Decimal(m.get("cost_retry", 0)),
                                  escalation=Decimal(m.get("cost_escalation", 0)),
                                  billed=Decimal(m.get("cost_total", 0)))

    by_day = sorted((row(k, m) for k, m in _fold(rows, lambda r: r["day"]).items()), key=lambda r: r.key)
    by_model = sorted((row(k or "(none)", m) for k, m in _fold(rows, lambda r: r["model"]).items()),
                      key=lambda r: (-(r.retry + r.escalation), -r.billed, r.key))
    return RetriesAndEscalations(by_day=by_day, by_model=by_model,
                                 total=row(None, _fold(rows, lambda r: None).get(None, {})))


# --- Breakdown pages (features, models, keys, users): cost, tokens, latency, errors ----------------------

BREAKDOWN_DIMENSIONS = ("feature", "model", "key", "user")


@dataclass(frozen=True)
class BreakdownRow:
    key: object  # feature or model name, API key id or user id
    requests: int
    errors: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost: Decimal
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    label: str = ""

    @property
    def cost_per_request(self) -> Decimal | None:
        return self.cost / self.requests if self.requests else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def breakdown(dimension: str, org_id: int, start: datetime, end: datetime, *, limit: int = 100,
              **narrow) -> list[BreakdownRow]:
    """Per feature, model, API key or user: requests, tokens, billed cost, latency and TTFT p50/p95, errors.

    Percentiles need every attempt, which the rollups do not keep, so this reads
    usage_events (one org's range; ClickHouse's `quantiles`, approximate, like every
    latency percentile on a dashboard). Refused attempts are left out of latency.
    """
    if dimension not in BREAKDOWN_DIMENSIONS:
        raise ValueError(f"cannot break down by {dimension!r}")
    f = _narrowed((org_id,), start, end, **narrow)
    sql, params = _events_sql(f)
    column = DIMENSIONS[dimension][1]
    answered = "status != 'refused'"
    result = get_client().query(
        f"SELECT {column} AS k, countIf({answered}), countIf(status = 'error'), sum(toUInt64(input_tokens)), "
        f"sum(toUInt64(cached_input_tokens)), sum(toUInt64(output_tokens)), sum(toDecimal128(cost_total, 9)), "
        f"quantilesIf(0.5, 0.95)(duration_ms, {answered}), "
        f"quantilesIf(0.5, 0.95)(ttft_ms, {answered} AND ttft_ms IS NOT NULL) "
        f"{sql} GROUP BY k ORDER BY sum(toDecimal128(cost_total, 9)) DESC, k LIMIT {int(limit)}",
        parameters=params)

    def pct(values, i):
        value = values[i] if values else None
        return None if value is None or value != value else float(value)  # NaN: no attempt had one

    rows = [BreakdownRow(key=k, requests=int(n), errors=int(e), input_tokens=int(i), cached_input_tokens=int(c),
                         output_tokens=int(o), cost=Decimal(cost), latency_p50_ms=pct(lat, 0),
                         latency_p95_ms=pct(lat, 1), ttft_p50_ms=pct(ttft, 0), ttft_p95_ms=pct(ttft, 1))
            for k, n, e, i, c, o, cost, lat, ttft in result.result_rows]
    if dimension in ("key", "user"):
        rows = _labelled(dimension, org_id, [r for r in rows if r.key])
    return rows


def _labelled(dimension: str, org_id: int, rows: list[BreakdownRow]) -> list[BreakdownRow]:
    from dataclasses import replace

    from django.contrib.auth import get_user_model

    from tenants.models import ApiKey

    ids = [r.key for r in rows]
    if dimension == "key":
        labels = {k.pk: f"{k.name} ({k.prefix}…)" for k in ApiKey.objects.filter(pk__in=ids, organization_id=org_id)}
    else:
        labels = {u.pk: u.get_username() for u in get_user_model().objects.filter(pk__in=ids)}
    return [replace(r, label=labels.get(r.key, f"#{r.key}")) for r in rows]


# --- Savings: what the cache and token optimization saved (counterfactual, never billed) ----------------


@dataclass(frozen=True)
class SavingsRow:
    key: object  # a day in the filter's time zone, or a feature
    answered: int
    cache_hits: int
    tokens_saved: int
    savings_cache: Decimal
    savings_tokens: Decimal
    billed: Decimal

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cache_hits / self.answered if self.answered else None

    @property
    def saved(self) -> Decimal:
        return self.savings_cache + self.savings_tokens


@dataclass(frozen=True)
class Savings:
    by_day: list[SavingsRow]
    by_feature: list[SavingsRow]
    total: SavingsRow


def savings(org_id: int, start: datetime, end: datetime, tz: str = "UTC", **narrow) -> Savings:
    """Cache and token-optimization savings and cache hits per day and per feature (one read, day × feature).

    Routing and escalation savings join here as those levers record theirs; today the
    cache (one exact layer) and token optimization record what they saved.
    """
    rows = usage_summary(_narrowed((org_id,), start, end, tz, **narrow), ["day", "feature"],
                         measures=["requests", "errors", "cache_hits", "tokens_saved", "savings_cache",
                                   "savings_tokens", "cost_total"])

    def row(key, m) -> SavingsRow:
        return SavingsRow(key=key, answered=m.get("requests", 0) - m.get("errors", 0),
                          cache_hits=m.get("cache_hits", 0), tokens_saved=m.get("tokens_saved", 0),
                          savings_cache=Decimal(m.get("savings_cache", 0)),
                          savings_tokens=Decimal(m.get("savings_tokens", 0)), billed=Decimal(m.get("cost_total", 0)))

    by_day = sorted((row(k, m) for k, m in _fold(rows, lambda r: r["day"]).items()), key=lambda r: r.key)
    by_feature = sorted((row(k or "(none)", m) for k, m in _fold(rows, lambda r: r["feature"]).items()),
                        key=lambda r: (-r.saved, r.key))
    return Savings(by_day=by_day, by_feature=by_feature, total=row(None, _fold(rows, lambda r: None).get(None, {})))


def gpu_pool_reports(start: datetime, end: datetime) -> list:
    """Every rated pool's statement over [start, end): total, used, idle, each org's charge (own GPU time plus
    any idle share) and platform overhead (metering.pool_statements; PostgreSQL only)."""
    from .models import PoolRate

    pools = sorted(set(PoolRate.objects.values_list("pool", flat=True)))
    return [pool_statements.pool_statement_report(pool, start, end) for pool in pools]


# --- GPU over time (staff GPU page): utilization and queue wait per pool per UTC hour ----------------


@dataclass(frozen=True)
class PoolHour:
    """One rated pool's hour: engine-seconds used against the replica-seconds its rates paid for."""

    pool: str
    hour: datetime  # start of the UTC hour
    engine_seconds: float
    replica_seconds: Decimal | None  # None: no rate covered this hour

    @property
    def utilization(self) -> float | None:
        return pool_statements.utilization(self.engine_seconds, self.replica_seconds)


def _utc_hours(start: datetime, end: datetime) -> list[datetime]:
    hour, hours = _floor(start, "hour"), []
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def pool_utilization_by_hour(start: datetime, end: datetime) -> dict[str, list[PoolHour]]:
    """Per rated pool (by name), every UTC hour of [start, end): engine-seconds from the hourly rollup
    (raw rows for partial edge hours) over the replica-seconds paid for in that hour (edge hours: the
    part inside the range). Hours without traffic are zero, not missing, so idle hours show as idle."""
    from .models import PoolRate

    rates: dict[str, list] = {}
    for rate in PoolRate.objects.order_by("effective_from"):
        rates.setdefault(rate.pool, []).append(rate)
    if not rates:
        return {}
    used = {(r["pool"], r["hour"].replace(tzinfo=dt_timezone.utc)): r["engine_seconds"]
            for r in usage_summary(UsageFilter(start=start, end=end), ["pool", "hour"],
                                   measures=["engine_seconds"])}
    hours = _utc_hours(start, end)
    return {
        pool: [PoolHour(pool=pool, hour=hour, engine_seconds=used.get((pool, hour), 0.0),
                        replica_seconds=pool_statements.pool_replica_seconds(
                            pool, max(hour, start), min(hour + timedelta(hours=1), end), rates=pool_rates))
               for hour in hours]
        for pool, pool_rates in sorted(rates.items())
    }


@dataclass(frozen=True)
class QueueWaitHour:
    pool: str
    hour: datetime  # start of the UTC hour
    attempts: int
    p50_ms: float
    p95_ms: float


def queue_wait_by_hour(start: datetime, end: datetime) -> dict[str, list[QueueWaitHour]]:
    """Per pool, each UTC hour with attempts: how long they waited for a slot (queue_wait_ms), p50 and p95.

    Reads the raw events (the rollups keep sums, not distributions). quantilesExact, both levels in one
    pass: an hour holds a few thousand attempts per pool, and an exact percentile is one a person can check
    (54 ms for 30 days over bench/dashboard_pages.py's 2 M events, against 74 ms for two quantileExact).
    Attempts served without a pool (cache hits) and refused ones never queued and are left out.
    """
    result = get_client().query(
        "SELECT pool, toStartOfHour(timestamp) AS hour, count() AS attempts, "
        "quantilesExact(0.5, 0.95)(queue_wait_ms) AS waits "
        "FROM usage_events FINAL WHERE timestamp >= {start:DateTime64(6, 'UTC')} "
        "AND timestamp < {end:DateTime64(6, 'UTC')} AND pool != '' AND status != 'refused' "
        "GROUP BY pool, hour ORDER BY pool, hour",
        parameters={"start": start, "end": end})
    by_pool: dict[str, list[QueueWaitHour]] = {}
    for pool, hour, attempts, (p50, p95) in result.result_rows:
        by_pool.setdefault(pool, []).append(QueueWaitHour(
            pool=pool, hour=hour.replace(tzinfo=dt_timezone.utc), attempts=int(attempts), p50_ms=float(p50),
            p95_ms=float(p95)))
    return by_pool


# --- Routing (savings page): what `model: "auto"` chose, per tier, and what escalation cost ---------


@dataclass(frozen=True)
class RoutingRow:
    key: object  # a day in the filter's time zone, or a tier (None: the totals)
    requests: int  # routed requests answered (distinct request ids; an escalated request counts once)
    by_tier: dict  # tier -> routed requests decided at that tier
    escalations: int  # attempts thrown away for a stronger model's answer
    escalation: Decimal  # what those attempts cost (billed)
    billed: Decimal

    def share(self, tier: int) -> float | None:
        return self.by_tier.get(tier, 0) / self.requests if self.requests else None


@dataclass(frozen=True)
class Routing:
    tiers: list[int]
    by_day: list[RoutingRow]
    by_tier: list[RoutingRow]
    by_reason: list[tuple[str, int]]  # why the router chose (classifier, low_confidence, …), most first
    total: RoutingRow

    @property
    def tier_shares(self) -> list[tuple[RoutingRow, float | None]]:
        """Each tier's row with its share of all routed requests."""
        return [(row, row.requests / self.total.requests if self.total.requests else None) for row in self.by_tier]


def routing(org_id: int, start: datetime, end: datetime, tz: str = "UTC", **narrow) -> Routing:
    """Requests sent as `model: "auto"`: how many each tier served, per day, and their escalation cost.

    What auto saved against the policy's default tier is not recorded (the counterfactual model is not
    on the row), so this shows the decisions and what escalating cost, from the usage rows' route_* fields.
    The rollups carry no route columns: one raw read grouped by day × tier × reason.
    """
    f = _narrowed((org_id,), start, end, tz, **narrow)
    params = {"start": f.start, "end": f.end, "tz": tz, "org_ids": list(f.org_ids or []),
              "feature": f.feature or "", "model": f.model or "", "pool": "", "api_key_id": f.api_key_id or 0,
              "user_id": f.user_id or 0}
    result = get_client().query(
        "SELECT toDate(timestamp, {tz:String}) AS day, ifNull(route_tier, 0) AS tier, route_reason, "
        "uniqExact(request_id) AS requests, countIf(cost_escalation > 0) AS escalations, "
        "sum(toDecimal128(cost_escalation, 9)) AS escalation, sum(toDecimal128(cost_total, 9)) AS billed "
        f"FROM usage_events FINAL WHERE {_where(f, 'timestamp', 'start', 'end', raw=True)} "
        "AND model_requested = 'auto' AND status != 'refused' GROUP BY day, tier, route_reason",
        parameters=params)
    rows = [dict(zip(["day", "tier", "reason", "requests", "escalations", "escalation", "billed"], r))
            for r in result.result_rows]

    def fold(key, selected: list[dict]) -> RoutingRow:
        by_tier: dict = {}
        for r in selected:
            by_tier[r["tier"]] = by_tier.get(r["tier"], 0) + int(r["requests"])
        return RoutingRow(key=key, requests=sum(by_tier.values()), by_tier=by_tier,
                          escalations=sum(int(r["escalations"]) for r in selected),
                          escalation=sum((Decimal(r["escalation"]) for r in selected), Decimal(0)),
                          billed=sum((Decimal(r["billed"]) for r in selected), Decimal(0)))

    reasons: dict = {}
    for r in rows:
        reasons[r["reason"] or "(none)"] = reasons.get(r["reason"] or "(none)", 0) + int(r["requests"])
    tiers = sorted({r["tier"] for r in rows})
    days = sorted({r["day"] for r in rows})
    return Routing(
        tiers=tiers,
        by_day=[fold(day, [r for r in rows if r["day"] == day]) for day in days],
        by_tier=[fold(tier, [r for r in rows if r["tier"] == tier]) for tier in tiers],
        by_reason=sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])),
        total=fold(None, rows),
    )
