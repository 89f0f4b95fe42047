"""What the command, the staff page and tests call: the ledger as a trace, prices, the stored plan."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Iterator

from django.conf import settings
from django.utils import timezone

from metering.costs import pool_cost
from metering.models import UsageRecord

from .models import CapacityPlan
from .traces import DEFAULT_COMPLETION_WINDOW, TraceRequest


def trace_from_ledger(since: datetime, until: datetime) -> Iterator[TraceRequest]:
    """Every attempt that ran on an engine in [since, until), as demand, oldest first.

    Read from the usage ledger in the OLTP database (metering.UsageRecord), not from ClickHouse: the ledger
    is the durable record every row is settled into (ClickHouse is fed from its outbox and may lag, and
    on the embedded default only the server process may open chDB). Each attempt counts, retries and
    escalations included, since each took engine time; cache hits and refusals ran no engine and are left
    out. ``created_at`` is when the gateway received the request (its arrival). Kind: embeddings by
    endpoint, batch when the row belongs to a Batch API batch (due 24 h after it arrived, the Batch API's
    window), interactive otherwise.
    """
    rows = (UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until, cache_hit=False)
            .exclude(status=UsageRecord.Status.REFUSED).exclude(attempt_kind=UsageRecord.AttemptKind.CACHE_HIT)
            .order_by("created_at")
            .values_list("created_at", "endpoint", "batch_id", "model_served", "model_requested", "input_tokens",
                         "output_tokens"))
    for at, endpoint, batch_id, served, requested, tokens_in, tokens_out in rows.iterator(chunk_size=5000):
        kind = "embedding" if endpoint.startswith("embeddings") else "batch" if batch_id else "interactive"
        yield TraceRequest(at=at, kind=kind, model=served or requested, prompt_tokens=tokens_in,
                           output_tokens=tokens_out, deadline=at + DEFAULT_COMPLETION_WINDOW if kind == "batch" else None)


def replica_hour_price(pool: str, at: datetime | None = None) -> tuple[Decimal, int, str]:
    """(USD per replica-hour, GPUs per replica, where the price came from) for `pool`: its GPU rate in
    force (metering's PoolRate: $/GPU-hour x GPUs one replica spans), else TOLLGATE_CAPACITY_REPLICA_HOUR_USD."""
    rate = pool_cost(pool, at or timezone.now())
    if rate is not None:
        return rate.usd_per_gpu_hour * rate.gpus_per_replica, rate.gpus_per_replica, f"pool rate of {pool!r}"
    try:
        return Decimal(settings.TOLLGATE_CAPACITY_REPLICA_HOUR_USD), 1, "TOLLGATE_CAPACITY_REPLICA_HOUR_USD"
    except InvalidOperation:
        raise ValueError("TOLLGATE_CAPACITY_REPLICA_HOUR_USD must be a decimal number") from None


def save_plan(result: dict, trace_label: str) -> CapacityPlan:
    return CapacityPlan.objects.create(trace=trace_label[:300], result=result)


def latest_plan() -> CapacityPlan | None:
    return CapacityPlan.objects.order_by("-created_at", "-pk").first()


def default_window() -> tuple[datetime, datetime]:
    """The last 7 whole UTC days: the default range of export_trace."""
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=7), today
