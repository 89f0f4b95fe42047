"""A SpanExporter that writes to ClickHouse `otel_traces` in the Collector's schema.

Batching, retries on the export thread and shutdown stay the SDK's
(BatchSpanProcessor); this class only turns finished spans into rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import pydantic_core
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from .clickhouse import get_client
from .metrics import SPANS_DROPPED

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


def _text(value: str) -> str:
    """``value`` as text ClickHouse can store: a lone UTF-16 surrogate (valid in a Python str, not in
    UTF-8) becomes U+FFFD, so one bad attribute cannot fail the insert of everybody's spans."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def _attr_value(value) -> str:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        try:  # pydantic-core: a fifth of the json module's time on the short lists spans carry
            return _text(pydantic_core.to_json(list(value)).decode())
        except ValueError:  # (a lone surrogate, which it will not encode; _text replaces it)
            return _text(json.dumps(list(value), ensure_ascii=False))
    return str(value)


def _attrs(attributes) -> dict[str, str]:
    if not attributes:
        return {}
    # An SDK span's attributes are a BoundedAttributes mapping, whose items() goes key by key through the
    # Mapping ABC; its copy() is the underlying dict, iterated in C.
    items = attributes.copy().items() if hasattr(attributes, "copy") else attributes.items()
    # Most keys and values are ASCII text already: those skip the conversions (a few per span, every request).
    return {(k if k.isascii() else _text(k)): (v if type(v) is str and v.isascii() else _attr_value(v))
            for k, v in items}


_resource_attrs: dict[int, tuple[object, dict[str, str]]] = {}


def _resource_attributes(resource) -> dict[str, str]:
    """A resource's attributes as text, converted once: every span of a provider shares one immutable
    Resource. The resource is kept with its entry, so its id cannot be reused by another object."""
    if resource is None:
        return {}
    entry = _resource_attrs.get(id(resource))
    if entry is None or entry[0] is not resource:
        if len(_resource_attrs) > 64:
            _resource_attrs.clear()
        entry = _resource_attrs[id(resource)] = (resource, _attrs(resource.attributes))
    return entry[1]


def span_to_row(span: ReadableSpan) -> list:
    ctx = span.get_span_context()
    parent = span.parent
    resource_attrs = _resource_attributes(span.resource)
    scope = span.instrumentation_scope
    links = list(span.links or [])
    events = list(span.events or [])
    # Timestamps go as the SDK's own integer nanoseconds, which is what DateTime64(9) stores: exact (a
    # datetime holds microseconds, and the float division on the way lost more), and no datetime built per
    # span and event (a tenth of the export's time).
    return [
        span.start_time,
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        format(parent.span_id, "016x") if parent else "",
        ctx.trace_state.to_header() if ctx.trace_state else "",
        _text(span.name),
        _KIND.get(span.kind, "Unspecified"),
        resource_attrs.get("service.name", ""),
        resource_attrs,
        scope.name if scope else "",
        (scope.version or "") if scope else "",
        _attrs(span.attributes),
        max(0, (span.end_time or span.start_time) - span.start_time),
        _STATUS.get(span.status.status_code, "Unset"),
        _text(span.status.description or ""),
        [e.timestamp for e in events],
        [_text(e.name) for e in events],
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
        client = get_client()
        try:
            client.insert(self.table, [span_to_row(s) for s in spans], column_names=OTEL_COLUMNS)
            return SpanExportResult.SUCCESS
        except Exception:
            logger.exception("exporting %d spans to ClickHouse failed; trying them one by one", len(spans))
        # Whatever made the batch fail, only the spans that fail alone are dropped (and counted).
        dropped = 0
        for span in spans:
            try:
                client.insert(self.table, [span_to_row(span)], column_names=OTEL_COLUMNS)
            except Exception:
                dropped += 1
                logger.exception("dropped span %s: it cannot be written to ClickHouse", span.name)
        SPANS_DROPPED.inc(dropped)
        return SpanExportResult.SUCCESS if dropped < len(spans) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
