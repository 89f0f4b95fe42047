"""The outbox shipper: copies ledger rows to ClickHouse `usage_events`, at least once.

Rows are marked shipped only after ClickHouse accepted them, so an outage
just leaves them waiting. A replay (crash between insert and mark) cannot
double-count: each batch carries an insert deduplication token, and
`usage_events` is a ReplacingMergeTree keyed on event id, read with FINAL.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from .clickhouse import get_client
from .models import UsageRecord

logger = logging.getLogger(__name__)

USAGE_COLUMNS = [
    "event_id", "request_id", "trace_id", "timestamp", "org_id", "org_slug", "feature", "api_key_id",
    "user_id", "endpoint", "model_requested", "model_served", "pool", "replica", "attempt_kind", "status",
    "error_code", "streamed", "input_tokens", "cached_input_tokens", "output_tokens", "tokens_saved",
    "queue_wait_ms", "ttft_ms", "duration_ms", "engine_seconds", "cost_input", "cost_output", "cost_gpu",
    "cost_total", "cache_hit", "downgraded",
]

_LEDGER_FIELDS = [
    "event_id", "request_id", "trace_id", "created_at", "organization_id", "organization__slug", "feature",
    "api_key_id", "user_id", "endpoint", "model_requested", "model_served", "pool", "replica", "attempt_kind",
    "status", "error_code", "streamed", "input_tokens", "cached_input_tokens", "output_tokens", "tokens_saved",
    "queue_wait_ms", "ttft_ms", "duration_ms", "engine_seconds", "cost_input", "cost_output", "cost_gpu",
    "cost_total", "cache_hit", "downgraded",
]


def _to_clickhouse_row(values: tuple) -> list:
    row = list(values)
    # Nullable ids become 0 in ClickHouse, where "no key/user" reads as 0.
    row[7] = row[7] or 0
    row[8] = row[8] or 0
    return row


def ship_batch(batch_size: int | None = None) -> int:
    """Ship one batch of unshipped rows; return how many were shipped."""
    batch_size = batch_size or settings.TOLLGATE_SHIP_BATCH_SIZE
    with transaction.atomic():
        pending = UsageRecord.objects.filter(shipped_at__isnull=True).order_by("created_at", "event_id")
        if connection.features.has_select_for_update_skip_locked:
            # Two shippers (say, two beat schedulers by mistake) take disjoint rows.
            pending = pending.select_for_update(skip_locked=True, of=("self",))
        rows = list(pending.values_list(*_LEDGER_FIELDS)[:batch_size])
        if not rows:
            return 0
        event_ids = [row[0] for row in rows]
        token = hashlib.sha256(b"".join(e.bytes for e in event_ids)).hexdigest()
        get_client().insert(
            "usage_events",
            [_to_clickhouse_row(row) for row in rows],
            column_names=USAGE_COLUMNS,
            settings={"insert_deduplication_token": token},
        )
        UsageRecord.objects.filter(event_id__in=event_ids).update(shipped_at=timezone.now())
    return len(rows)


def ship_pending_usage(batch_size: int | None = None, max_batches: int = 1000) -> int:
    """Ship until the outbox is empty (or max_batches); return rows shipped."""
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
