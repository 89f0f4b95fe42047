"""With the standard OTEL_EXPORTER_OTLP_* variables set, spans also go to a Collector over OTLP/HTTP."""

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from django.test import override_settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tollgate.telemetry import build_tracer_provider


class FakeCollector(BaseHTTPRequestHandler):
    """Stands in for an OpenTelemetry Collector's OTLP/HTTP receiver: records what it is sent."""

    received: list[tuple[str, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        FakeCollector.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_set(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), FakeCollector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # the exporter reads it itself
    try:
        with override_settings(TOLLGATE_SPANS_TO_CLICKHOUSE=False, OTEL_SERVICE_NAME="tollgate-otlp-test",
                               OTEL_EXPORTER_OTLP_ENDPOINT=endpoint):  # as settings.py reads it at start
            provider = build_tracer_provider()
        with provider.get_tracer("test").start_as_current_span("chat tollgate-mini") as span:
            span.set_attribute("gen_ai.request.model", "tollgate-mini")
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
    path, body = FakeCollector.received[-1]
    assert path == "/v1/traces"
    request = ExportTraceServiceRequest.FromString(body)
    resource_spans = request.resource_spans[0]
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    names = [s.name for scope in resource_spans.scope_spans for s in scope.spans]
    assert service == "tollgate-otlp-test" and names == ["chat tollgate-mini"]
