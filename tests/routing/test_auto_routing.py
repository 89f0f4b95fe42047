"""`model: "auto"` picks the smallest reliable tier, honours X-Quality, downgrade budgets and routing policies,
and records every decision on the usage row, the span and ClickHouse. Over real HTTP with the openai client."""

import random

import openai
import pytest

from budgets.models import Budget
from metering.models import CatalogModel, UsageRecord
from metering.shipping import ship_pending_usage
from routing import dataset
from routing.models import RoutingPolicy
from tollgate.telemetry import flush_spans

pytestmark = pytest.mark.django_db(transaction=True)

EXTRACTION = [{"role": "user", "content": "Extract the email address from this note: \"Write to "
                                          "lena.ortiz@example.com about the invoice.\""}]
HARD_REASONING = [{"role": "user", "content": (
    "Think step by step and justify each deduction: three friends each own a different pet and live in three "
    "cities; the cat owner does not live in the first city and the dog owner is not the first person. Who owns "
    "the fish?")}]
LONG_DOCUMENT = [{"role": "user", "content": dataset._document(random.Random(7), 9) + (
    "\n\nAnalyse this agreement: flag the clauses that contradict each other and rate the risk for the customer.")}]


def _auto(client, messages, **headers):
    return client.chat.completions.with_raw_response.create(
        model="auto", messages=messages, max_tokens=2, temperature=0, extra_headers=headers or None)


def test_auto_serves_a_trivial_extraction_on_tier_1_and_hard_work_on_tier_3(openai_client):
    served = {}
    for name, messages in (("extraction", EXTRACTION), ("reasoning", HARD_REASONING), ("document", LONG_DOCUMENT)):
        raw = _auto(openai_client, messages)
        served[name] = (raw.parse().model, raw.headers["x-tollgate-route"], raw.headers["x-tollgate-model"])
    assert served["extraction"] == ("tollgate-mini", "1:classifier", "tollgate-mini")
    assert served["reasoning"] == ("tollgate-large", "3:classifier", "tollgate-large")
    assert served["document"] == ("tollgate-large", "3:classifier", "tollgate-large")
    rows = UsageRecord.objects.order_by("created_at")
    assert [(r.model_requested, r.model_served, r.route_tier) for r in rows] == [
        ("auto", "tollgate-mini", 1), ("auto", "tollgate-large", 3), ("auto", "tollgate-large", 3)]


def test_x_quality_high_starts_auto_at_the_top_tier(openai_client):
    raw = _auto(openai_client, EXTRACTION, **{"X-Quality": "high"})
    assert raw.parse().model == "tollgate-large"
    assert raw.headers["x-tollgate-route"] == "3:quality_high"
    row = UsageRecord.objects.get()
    assert (row.route_tier, row.route_reason, row.route_score) == (3, "quality_high", None)


def test_a_downgrade_budget_caps_the_routed_tier_in_the_same_single_decision(openai_client, tenant, clickhouse):
    Budget.objects.create(organization=tenant.org, amount=0, action=Budget.Action.DOWNGRADE)
    raw = _auto(openai_client, HARD_REASONING)
    assert raw.parse().model == "tollgate-mini"
    assert raw.headers["x-tollgate-route"] == "1:budget_cap"
    assert raw.headers["x-tollgate-downgraded"] == "tollgate-large->tollgate-mini"
    row = UsageRecord.objects.get()  # one attempt, one row: the request was routed once
    assert (row.model_requested, row.route_model, row.model_served) == ("auto", "tollgate-large", "tollgate-mini")
    assert (row.route_tier, row.route_reason, row.downgraded) == (1, "budget_cap", True)
    assert flush_spans()
    spans = clickhouse.query("SELECT SpanName FROM otel_traces WHERE TraceId = {tid:String}",
                             parameters={"tid": row.trace_id}).result_rows
    assert [name for (name,) in spans].count("route") == 1


def test_policy_minimum_tier_lifts_auto_and_refuses_a_weaker_named_model(openai_client, tenant):
    RoutingPolicy.objects.create(organization=tenant.org, min_tier=2)
    raw = _auto(openai_client, EXTRACTION)
    assert raw.parse().model == "tollgate-small"
    assert raw.headers["x-tollgate-route"] == "2:min_tier"

    with pytest.raises(openai.PermissionDeniedError) as err:
        openai_client.chat.completions.create(model="tollgate-mini", messages=EXTRACTION, max_tokens=2)
    error = err.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == ("model", "model_below_minimum_tier")
    assert "tollgate-mini" in error["message"]


def test_policy_allowed_models_bound_auto_and_refuse_other_named_models(openai_client, tenant, catalog):
    policy = RoutingPolicy.objects.create(organization=tenant.org)
    policy.allowed_models.set([catalog["tollgate-mini"], catalog["tollgate-small"]])
    raw = _auto(openai_client, HARD_REASONING)
    assert raw.parse().model == "tollgate-small"  # the strongest it may use
    assert raw.headers["x-tollgate-route"] == "2:nearest_tier"

    with pytest.raises(openai.PermissionDeniedError) as err:
        openai_client.chat.completions.create(model="tollgate-large", messages=EXTRACTION, max_tokens=2)
    error = err.value.response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == ("model", "model_not_allowed", "permission_error")
    # Named models the policy allows work as before, and say so.
    raw = openai_client.chat.completions.with_raw_response.create(model="tollgate-small", messages=EXTRACTION,
                                                                   max_tokens=2)
    assert raw.parse().model == "tollgate-small" and raw.headers["x-tollgate-route"] == "2:explicit"
    assert UsageRecord.objects.filter(model_requested="tollgate-large").count() == 0  # refused before billing


def test_a_feature_policy_replaces_the_org_policy_for_that_feature(openai_client, tenant):
    RoutingPolicy.objects.create(organization=tenant.org, min_tier=3)
    RoutingPolicy.objects.create(organization=tenant.org, feature=tenant.features["search"], min_tier=1)
    assert _auto(openai_client, EXTRACTION).parse().model == "tollgate-large"  # the key's feature: chat
    assert _auto(openai_client, EXTRACTION, **{"X-Feature": "search"}).parse().model == "tollgate-mini"


def test_the_decision_is_on_the_usage_row_the_span_and_in_clickhouse(openai_client, clickhouse):
    raw = _auto(openai_client, EXTRACTION)
    assert raw.http_response.status_code == 200
    row = UsageRecord.objects.get()
    assert (row.model_requested, row.route_model, row.route_tier, row.route_reason) == (
        "auto", "tollgate-mini", 1, "classifier")
    assert 0.5 <= row.route_score <= 1

    assert flush_spans()
    (attrs,) = clickhouse.query(
        "SELECT SpanAttributes FROM otel_traces WHERE TraceId = {tid:String} AND ParentSpanId = ''",
        parameters={"tid": row.trace_id}).result_rows[0]
    assert attrs["tollgate.route.requested_model"] == "auto"
    assert attrs["tollgate.route.chosen_model"] == "tollgate-mini"
    assert attrs["tollgate.route.tier"] == "1"
    assert attrs["tollgate.route.reason"] == "classifier"
    assert float(attrs["tollgate.route.score"]) == pytest.approx(row.route_score, abs=1e-3)

    assert ship_pending_usage() == 1
    shipped = clickhouse.query("SELECT model_requested, route_model, route_tier, route_reason, route_score "
                               "FROM usage_events FINAL").result_rows
    (requested, model, tier, reason, score), = shipped
    assert (requested, model, tier, reason) == ("auto", "tollgate-mini", 1, "classifier")
    assert score == pytest.approx(row.route_score, abs=1e-3)


def test_auto_with_nothing_allowed_served_is_a_404_naming_model(openai_client, tenant):
    policy = RoutingPolicy.objects.create(organization=tenant.org)
    policy.allowed_models.set([CatalogModel.objects.create(name="tollgate-unserved", tier=2)])
    with pytest.raises(openai.NotFoundError) as err:
        _auto(openai_client, EXTRACTION)
    assert err.value.response.json()["error"]["param"] == "model"


def test_a_streamed_auto_request_says_its_route_in_its_headers(openai_client):
    with openai_client.chat.completions.with_streaming_response.create(
            model="auto", messages=HARD_REASONING, max_tokens=2, stream=True) as stream:
        assert stream.headers["x-tollgate-route"] == "3:classifier"
        assert stream.headers["x-tollgate-model"] == "tollgate-large"
        chunks = [line for line in stream.iter_lines() if line]
    assert chunks[-1] == "data: [DONE]"
    assert UsageRecord.objects.get().route_reason == "classifier"
