"""OpenTelemetry setup for the web process: spans to ClickHouse, optionally OTLP too."""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

logger = logging.getLogger(__name__)
_configured = False
_lock = threading.Lock()


def build_tracer_provider() -> TracerProvider:
    """A provider exporting through the SDK's BatchSpanProcessor to ClickHouse and, if configured, OTLP."""
    provider = TracerProvider(resource=Resource.create({"service.name": settings.OTEL_SERVICE_NAME}))
    if settings.TOLLGATE_SPANS_TO_CLICKHOUSE:
        from metering.spans import ClickHouseSpanExporter

        # ClickHouse wants few large inserts: each insert writes new parts, at a fixed cost far above
        # the per-row cost. So batches are much larger than the SDK's defaults (2,048 queued, 512 per
        # export): one insert per OTEL_BSP_SCHEDULE_DELAY (5 s) under normal load. The standard
        # OTEL_BSP_* variables still override these (tollgate/settings.py reads them).
        provider.add_span_processor(BatchSpanProcessor(
            ClickHouseSpanExporter(),
            max_queue_size=settings.OTEL_BSP_MAX_QUEUE_SIZE,
            max_export_batch_size=settings.OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
        ))
    if settings.OTEL_EXPORTER_OTLP_ENDPOINT or settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            logger.warning("OTEL_EXPORTER_OTLP_* is set but the `otlp` extra "
                           "(opentelemetry-exporter-otlp-proto-http) is not installed")
        else:
            # The exporter reads the standard OTEL_EXPORTER_OTLP_* variables itself.
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def configure_tracing() -> None:
    """Install the global tracer provider once. Management commands never call this."""
    global _configured
    with _lock:
        if _configured:
            return
        trace.set_tracer_provider(build_tracer_provider())
        _configured = True


def flush_spans(timeout_millis: int = 10000) -> bool:
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    return flush(timeout_millis) if flush else True
