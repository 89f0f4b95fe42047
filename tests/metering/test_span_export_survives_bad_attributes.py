"""One span with an attribute that cannot be written as UTF-8 never costs the rest of its batch."""

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from metering.spans import ClickHouseSpanExporter

pytestmark = pytest.mark.django_db


def finished_spans(*attribute_sets) -> list:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for i, attributes in enumerate(attribute_sets):
        with tracer.start_as_current_span(f"span-{i}", attributes=attributes):
            pass
    return list(memory.get_finished_spans())


def test_a_lone_surrogate_in_one_span_does_not_drop_the_batch(clickhouse):
    spans = finished_spans({"tollgate.org": "acme"}, {"gen_ai.request.model": "\ud800 evil"},
                           {"tollgate.org": "globex"})
    assert ClickHouseSpanExporter().export(spans) == SpanExportResult.SUCCESS
    rows = clickhouse.query("SELECT SpanName, SpanAttributes FROM otel_traces ORDER BY SpanName").result_rows
    assert [name for name, _ in rows] == ["span-0", "span-1", "span-2"]
    assert rows[1][1]["gen_ai.request.model"] == "\ufffd evil"  # the unencodable part replaced, the rest kept


def test_a_span_clickhouse_refuses_is_dropped_and_counted_alone(clickhouse):
    from prometheus_client import REGISTRY

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("before"):
        pass
    # A start time past what DateTime64(9) can hold (the year 2262): no row can carry it.
    tracer.start_span("from the far future", start_time=10**20).end(end_time=10**20 + 1)
    with tracer.start_as_current_span("after"):
        pass
    dropped_before = REGISTRY.get_sample_value("tollgate_spans_dropped_total") or 0

    assert ClickHouseSpanExporter().export(list(memory.get_finished_spans())) == SpanExportResult.SUCCESS

    names = {name for (name,) in clickhouse.query("SELECT SpanName FROM otel_traces").result_rows}
    assert names == {"before", "after"}
    assert REGISTRY.get_sample_value("tollgate_spans_dropped_total") == dropped_before + 1


def test_span_and_event_times_keep_their_nanoseconds(clickhouse):
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    span = provider.get_tracer("test").start_span("timed", start_time=1_796_000_000_123_456_789)
    span.add_event("midway", timestamp=1_796_000_000_223_456_789)
    span.end(end_time=1_796_000_000_323_456_789)
    assert ClickHouseSpanExporter().export(list(memory.get_finished_spans())) == SpanExportResult.SUCCESS
    (start, event, duration), = clickhouse.query(
        "SELECT toUnixTimestamp64Nano(Timestamp), toUnixTimestamp64Nano(Events.Timestamp[1]), Duration "
        "FROM otel_traces WHERE SpanName = 'timed'").result_rows
    assert (start, event, duration) == (1_796_000_000_123_456_789, 1_796_000_000_223_456_789, 200_000_000)


def test_a_list_attribute_is_kept_as_json_and_a_lone_surrogate_in_it_replaced(clickhouse):
    spans = finished_spans({"gen_ai.response.finish_reasons": ("stop", "length")},
                           {"tollgate.route.alternatives": ("tollgate-\ud800mini",)})
    assert ClickHouseSpanExporter().export(spans) == SpanExportResult.SUCCESS
    rows = dict(clickhouse.query("SELECT SpanName, SpanAttributes FROM otel_traces").result_rows)
    assert rows["span-0"]["gen_ai.response.finish_reasons"] == '["stop","length"]'
    assert rows["span-1"]["tollgate.route.alternatives"] == '["tollgate-\ufffdmini"]'
