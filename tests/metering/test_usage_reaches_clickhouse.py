"""A served request lands in ClickHouse: its usage row (via the outbox) and its spans."""

from decimal import Decimal

import pytest

from metering.models import UsageRecord
from metering.shipping import ship_pending_usage
from tollgate.telemetry import flush_spans

pytestmark = pytest.mark.django_db(transaction=True)


def test_request_is_shipped_to_usage_events_with_the_ledger_numbers(openai_client, tenant, clickhouse):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "ship me"}], max_tokens=8
    )
    request_id = raw.headers["x-request-id"]
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.shipped_at is None

    assert ship_pending_usage() == 1
    record.refresh_from_db()
    assert record.shipped_at is not None
    assert ship_pending_usage() == 0  # nothing left in the outbox

    rows = clickhouse.query(
        "SELECT org_id, org_slug, feature, model_served, input_tokens, output_tokens, cost_total, status "
        "FROM usage_events FINAL WHERE request_id = {rid:String}",
        parameters={"rid": request_id},
    ).result_rows
    assert rows == [(tenant.org.pk, "acme", "chat", "tollgate-mini", record.input_tokens, record.output_tokens,
                     record.cost_total, "ok")]


def test_request_spans_carry_genai_and_tollgate_attributes(openai_client, tenant, clickhouse):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "trace me"}], max_tokens=5
    )
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert flush_spans()

    spans = clickhouse.query(
        "SELECT SpanName, SpanKind, ParentSpanId, SpanAttributes, ServiceName FROM otel_traces "
        "WHERE TraceId = {tid:String} ORDER BY Timestamp",
        parameters={"tid": record.trace_id},
    ).result_rows
    by_name = {name: (kind, parent, attrs, service) for name, kind, parent, attrs, service in spans}
    assert set(by_name) == {"POST /v1/chat/completions", "auth", "route", "chat tollgate-mini", "settle"}

    server_kind, server_parent, server_attrs, service = by_name["POST /v1/chat/completions"]
    assert (server_kind, server_parent, service) == ("Server", "", "tollgate")
    server_id = clickhouse.query(
        "SELECT SpanId FROM otel_traces WHERE TraceId = {tid:String} AND ParentSpanId = ''",
        parameters={"tid": record.trace_id}).result_rows[0][0]
    # auth, routing, the engine attempt and settlement are children of the request's span.
    assert {by_name[n][1] for n in ("auth", "route", "chat tollgate-mini", "settle")} == {server_id}
    assert by_name["auth"][2]["tollgate.api_key_id"] == str(tenant.key.pk)
    assert by_name["route"][2]["tollgate.route.model"] == "tollgate-mini"
    settle_attrs = by_name["settle"][2]
    assert settle_attrs["tollgate.cost.total"] == str(record.cost_total)
    assert settle_attrs["tollgate.cost.base"] == str(record.cost_base)
    assert Decimal(settle_attrs["tollgate.cost.retry"]) == 0
    assert settle_attrs["tollgate.cache_hit"] == "false"
    assert settle_attrs["tollgate.retry_attempt"] == "0"
    assert server_attrs["tollgate.org"] == "acme"
    assert server_attrs["tollgate.feature"] == "chat"
    assert server_attrs["http.response.status_code"] == "200"

    kind, parent, attrs, _ = by_name["chat tollgate-mini"]
    assert kind == "Client" and parent != ""
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "tollgate-mini"
    assert attrs["gen_ai.usage.input_tokens"] == str(record.input_tokens)
    assert attrs["gen_ai.usage.output_tokens"] == str(record.output_tokens)
    assert attrs["tollgate.cost.total"] == str(record.cost_total)
