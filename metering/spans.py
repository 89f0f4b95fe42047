"""A SpanExporter that writes to ClickHouse `otel_traces` in the Collector's schema.

Batching, retries on the export thread and shutdown stay the SDK's
(BatchSpanProcessor); this class only turns finished spans into rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from .clickhouse import get_client

logger = logging.getLogger(__name__)

OTEL_COLUMNS = [
    "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind", "ServiceName",
    "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes", "Duration", "StatusCode",
    "StatusMessage", "Events.Timestamp", "Events.Name", "Events.Attributes", "Links.TraceId", "Links.SpanId",
    "Links.TraceState", "Links.Attributes",
]

# The Collector writes these enum spellings; Grafana's plugin filters on them.
_KIND = {
    SpanKind.INTERNAL: "Internal",
    SpanKind.SERVER: "Server",
    SpanKind.CLIENT: "Client",
    SpanKind.PRODUCER: "Producer",
    SpanKind.CONSUMER: "Consumer",
}
_STATUS = {StatusCode.UNSET: "Unset", StatusCode.OK: "Ok", StatusCode.ERROR: "Error"}


def _attr_value(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def _attrs(attributes) -> dict[str, str]:
    return {k: _attr_value(v) for k, v in (attributes or {}).items()}


def _ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def span_to_row(span: ReadableSpan) -> list:
    ctx = span.get_span_context()
    parent = span.parent
    resource_attrs = _attrs(span.resource.attributes if span.resource else {})
    scope = span.instrumentation_scope
    links = list(span.links or [])
    events = list(span.events or [])
    return [
        _ns_to_datetime(span.start_time),
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(parent.span_id, "016x") if parent else "",
        ctx.trace_state.to_header() if ctx.trace_state else "",
        span.name,
        _KIND.get(span.kind, "Unspecified"),
        resource_attrs.get("service.name", ""),
        resource_attrs,
        scope.name if scope else "",
        (scope.version or "") if scope else "",
        _attrs(span.attributes),
        max(0, (span.end_time or span.start_time) - span.start_time),
        _STATUS.get(span.status.status_code, "Unset"),
        span.status.description or "",
        [_ns_to_datetime(e.timestamp) for e in events],
        [e.name for e in events],
        [_attrs(e.attributes) for e in events],
        [format(link.context.trace_id, "032x") for link in links],
        [format(link.context.span_id, "016x") for link in links],
        [link.context.trace_state.to_header() if link.context.trace_state else "" for link in links],
        [_attrs(link.attributes) for link in links],
    ]


class ClickHouseSpanExporter(SpanExporter):
    def __init__(self, table: str = "otel_traces"):
        self.table = table
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            get_client().insert(self.table, [span_to_row(s) for s in spans], column_names=OTEL_COLUMNS)
        except Exception:
            logger.exception("exporting %d spans to ClickHouse failed", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
