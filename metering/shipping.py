"""The outbox shipper: copies ledger rows to ClickHouse `usage_events`, at least once, counted once.

1. Claim: in one short transaction, stamp a batch id on up to N unshipped
   rows (SKIP LOCKED on PostgreSQL, so two shippers take disjoint rows).
2. Send: insert exactly those rows with the batch id as the insert
   deduplication token (and dedup through the rollup view).
3. Mark: set shipped_at on the batch's rows.

A crash or outage between 1 and 3 leaves the batch claimed but unshipped;
after TOLLGATE_SHIP_LEASE_S the next run re-sends the very same rows with the
same token, so ClickHouse drops the copy (and usage_events, a
ReplacingMergeTree on event id read with FINAL, could not double-count it
anyway). Rows are never lost: they leave the outbox only after ClickHouse
accepted them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from .clickhouse import get_client, usage_insert_settings
from .models import UsageRecord

logger = logging.getLogger(__name__)

# What is shipped: (usage_events column, ledger field, Arrow type). A batch goes to
# ClickHouse as one Arrow table: pyarrow converts each column in C, where
# clickhouse-connect's own insert() turns every UUID, Decimal and datetime into
# the native format in Python, value by value (slower, row- or column-oriented;
# bench/usage_ingest.py compares them). Arrow's decimal128(18, 9) is the
# column's own type, so money stays exact.
_MONEY = pa.decimal128(18, 9)
_SHIPPED = [
    ("event_id", "event_id", "uuid"),
    ("request_id", "request_id", pa.string()),
    ("trace_id", "trace_id", pa.string()),
    ("timestamp", "created_at", pa.timestamp("us", tz="UTC")),
    ("org_id", "organization_id", pa.uint64()),
    ("org_slug", "organization__slug", pa.string()),
    ("feature", "feature", pa.string()),
    # Nullable ids become 0 in ClickHouse, where "no key/user" reads as 0.
    ("api_key_id", "api_key_id", "id_or_zero"),
    ("user_id", "user_id", "id_or_zero"),
    ("endpoint", "endpoint", pa.string()),
    ("model_requested", "model_requested", pa.string()),
    ("model_served", "model_served", pa.string()),
    ("pool", "pool", pa.string()),
    ("replica", "replica", pa.string()),
    ("attempt_kind", "attempt_kind", pa.string()),
    ("status", "status", pa.string()),
    ("error_code", "error_code", pa.string()),
    ("streamed", "streamed", pa.bool_()),
    ("input_tokens", "input_tokens", pa.uint32()),
    ("cached_input_tokens", "cached_input_tokens", pa.uint32()),
    ("output_tokens", "output_tokens", pa.uint32()),
    ("tokens_saved", "tokens_saved", pa.uint32()),
    ("queue_wait_ms", "queue_wait_ms", pa.float64()),
    ("ttft_ms", "ttft_ms", pa.float64()),
    ("duration_ms", "duration_ms", pa.float64()),
    ("engine_seconds", "engine_seconds", pa.float64()),
    ("cost_input", "cost_input", _MONEY),
    ("cost_output", "cost_output", _MONEY),
    ("cost_gpu", "cost_gpu", _MONEY),
    ("cost_total", "cost_total", _MONEY),
    ("cache_hit", "cache_hit", pa.bool_()),
    ("downgraded", "downgraded", pa.bool_()),
    ("chargeback_mode", "chargeback_mode", pa.string()),
    ("cost_base", "cost_base", _MONEY),
    ("cost_retry", "cost_retry", _MONEY),
    ("cost_escalation", "cost_escalation", _MONEY),
    ("savings_cache", "savings_cache", _MONEY),
    ("savings_tokens", "savings_tokens", _MONEY),
    ("discarded", "discarded", pa.bool_()),
    ("retry_attempt", "retry_attempt", pa.uint16()),
    ("tpot_ms", "tpot_ms", pa.float64()),
    ("route_tier", "route_tier", pa.uint8()),
    ("route_model", "route_model", pa.string()),
    ("route_reason", "route_reason", pa.string()),
    ("route_score", "route_score", pa.float32()),
    ("cache_layer", "cache_layer", pa.string()),
    ("batch_id", "batch_id", pa.string()),
]
USAGE_COLUMNS = [column for column, _, _ in _SHIPPED]
_LEDGER_FIELDS = [field for _, field, _ in _SHIPPED]


def _arrow_column(values: tuple, kind) -> pa.Array:
    if kind == "uuid":
        # UUID columns read Arrow's 16-byte binary in RFC 4122 byte order.
        return pa.array([value.bytes for value in values], pa.binary(16))
    if kind == "id_or_zero":
        return pc.fill_null(pa.array(values, pa.uint64()), 0)
    return pa.array(values, kind)


def usage_batch_table(rows: list[tuple]) -> pa.Table:
    """Ledger rows (tuples in _LEDGER_FIELDS order) as one Arrow table with usage_events' columns."""
    columns = list(zip(*rows))
    return pa.Table.from_arrays([_arrow_column(values, kind) for values, (_, _, kind) in zip(columns, _SHIPPED)],
                                names=USAGE_COLUMNS)


def insert_usage_rows(rows: list[tuple], dedup_token: str) -> None:
    """One insert of a batch: a replay with the same token is dropped by usage_events and the rollups."""
    get_client().insert_arrow("usage_events", usage_batch_table(rows), settings=usage_insert_settings(dedup_token))


def claim_batch(batch_size: int) -> uuid.UUID | None:
    """A batch to send: an abandoned one (claimed longer ago than the lease) first, else a fresh claim."""
    now = timezone.now()
    lease_expired = now - timedelta(seconds=settings.TOLLGATE_SHIP_LEASE_S)
    with transaction.atomic():
        abandoned = UsageRecord.objects.filter(
            Q(ship_claimed_at__isnull=True) | Q(ship_claimed_at__lte=lease_expired),
            shipped_at__isnull=True, ship_batch__isnull=False,
        )
        if connection.features.has_select_for_update_skip_locked:
            abandoned = abandoned.select_for_update(skip_locked=True, of=("self",))
        batch = abandoned.values_list("ship_batch", flat=True).first()
        if batch is not None:
            # Take over the lease, so a second shipper does not resend it at the same time.
            UsageRecord.objects.filter(ship_batch=batch).update(ship_claimed_at=now)
            return batch
        pending = UsageRecord.objects.filter(shipped_at__isnull=True, ship_batch__isnull=True).order_by(
            "created_at", "event_id")
        if connection.features.has_select_for_update_skip_locked:
            pending = pending.select_for_update(skip_locked=True, of=("self",))
        batch = uuid.uuid4()
        # One UPDATE over a subquery: the ids never come back to Python (a list of 5,000 UUIDs passed back
        # in as a filter cost the web process more CPU than the rest of shipping).
        claimed = UsageRecord.objects.filter(event_id__in=pending.values("event_id")[:batch_size]).update(
            ship_batch=batch, ship_claimed_at=now)
        return batch if claimed else None


def send_batch(batch: uuid.UUID) -> int:
    """Insert a claimed batch into ClickHouse and mark it shipped. Safe to repeat."""
    rows = list(UsageRecord.objects.filter(ship_batch=batch, shipped_at__isnull=True)
                .order_by("event_id").values_list(*_LEDGER_FIELDS))
    if not rows:
        return 0
    insert_usage_rows(rows, str(batch))
    UsageRecord.objects.filter(ship_batch=batch).update(shipped_at=timezone.now())
    return len(rows)


def ship_batch(batch_size: int | None = None) -> int:
    """Ship one batch of unshipped rows; return how many were shipped."""
    batch = claim_batch(batch_size or settings.TOLLGATE_SHIP_BATCH_SIZE)
    if batch is None:
        return 0
    try:
        return send_batch(batch)
    except BaseException:
        # Give the lease back (the rows stay in this batch), so the next run
        # retries the same rows with the same token at once instead of after the lease.
        UsageRecord.objects.filter(ship_batch=batch, shipped_at__isnull=True).update(ship_claimed_at=None)
        raise


def ship_pending_usage(batch_size: int | None = None, max_batches: int = 1000) -> int:
    """Ship full batches while there is a backlog, then what is left once; return rows shipped.

    It stops after the first batch that is not full: while requests keep
    arriving the outbox is never empty, and chasing it would send a stream of
    tiny batches back to back, each paying ClickHouse's fixed cost per insert
    (measured: 2,200 rows in 12.8 s that way, against ~15 ms for one insert of
    300 rows). The rows that arrive meanwhile go with the next run.
    """
    batch_size = batch_size or settings.TOLLGATE_SHIP_BATCH_SIZE
    shipped = 0
    for _ in range(max_batches):
        count = ship_batch(batch_size)
        shipped += count
        if count < batch_size:
            break
    return shipped


class InProcessShipper:
    """Runs ship_pending_usage every few seconds in a daemon thread (embedded default).

    Production runs the same function from Celery beat (metering.tasks.ship_usage).
    """

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-shipper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.interval_s
        while not self._stop.wait(delay):
            try:
                shipped = ship_pending_usage()
                if shipped:
                    logger.info("shipped %d usage events to ClickHouse", shipped)
                delay = self.interval_s
            except Exception:
                # ClickHouse or the database is away: rows stay in the outbox; back off.
                logger.exception("usage shipping failed; will retry")
                delay = min(delay * 2, 60.0)
            finally:
                close_old_connections()


_shipper: InProcessShipper | None = None
_shipper_lock = threading.Lock()


def start_inprocess_shipper() -> InProcessShipper:
    global _shipper
    with _shipper_lock:
        if _shipper is None:
            _shipper = InProcessShipper(settings.TOLLGATE_SHIP_INTERVAL_S)
            _shipper.start()
    return _shipper
