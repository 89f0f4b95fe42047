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

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from .clickhouse import get_client, usage_insert_settings
from .models import UsageRecord

logger = logging.getLogger(__name__)

USAGE_COLUMNS = [
    "event_id", "request_id", "trace_id", "timestamp", "org_id", "org_slug", "feature", "api_key_id",
    "user_id", "endpoint", "model_requested", "model_served", "pool", "replica", "attempt_kind", "status",
    "error_code", "streamed", "input_tokens", "cached_input_tokens", "output_tokens", "tokens_saved",
    "queue_wait_ms", "ttft_ms", "duration_ms", "engine_seconds", "cost_input", "cost_output", "cost_gpu",
    "cost_total", "cache_hit", "downgraded", "chargeback_mode", "cost_base", "cost_retry", "cost_escalation",
    "savings_cache", "savings_tokens", "discarded", "retry_attempt",
]

_LEDGER_FIELDS = [
    "event_id", "request_id", "trace_id", "created_at", "organization_id", "organization__slug", "feature",
    "api_key_id", "user_id", "endpoint", "model_requested", "model_served", "pool", "replica", "attempt_kind",
    "status", "error_code", "streamed", "input_tokens", "cached_input_tokens", "output_tokens", "tokens_saved",
    "queue_wait_ms", "ttft_ms", "duration_ms", "engine_seconds", "cost_input", "cost_output", "cost_gpu",
    "cost_total", "cache_hit", "downgraded", "chargeback_mode", "cost_base", "cost_retry", "cost_escalation",
    "savings_cache", "savings_tokens", "discarded", "retry_attempt",
]


def _to_clickhouse_row(values: tuple) -> list:
    row = list(values)
    # Nullable ids become 0 in ClickHouse, where "no key/user" reads as 0.
    row[7] = row[7] or 0
    row[8] = row[8] or 0
    return row


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
        event_ids = list(pending.values_list("event_id", flat=True)[:batch_size])
        if not event_ids:
            return None
        batch = uuid.uuid4()
        UsageRecord.objects.filter(event_id__in=event_ids).update(ship_batch=batch, ship_claimed_at=now)
        return batch


def send_batch(batch: uuid.UUID) -> int:
    """Insert a claimed batch into ClickHouse and mark it shipped. Safe to repeat."""
    rows = list(UsageRecord.objects.filter(ship_batch=batch, shipped_at__isnull=True)
                .order_by("event_id").values_list(*_LEDGER_FIELDS))
    if not rows:
        return 0
    get_client().insert("usage_events", [_to_clickhouse_row(row) for row in rows], column_names=USAGE_COLUMNS,
                        settings=usage_insert_settings(str(batch)))
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
    """Ship until the outbox is empty (or max_batches); return rows shipped."""
    batch_size = batch_size or settings.TOLLGATE_SHIP_BATCH_SIZE
    shipped = 0
    for _ in range(max_batches):
        count = ship_batch(batch_size)
        shipped += count
        if count == 0:
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
