"""/api/usage/: filters, group_by, paging, CSV, OpenAPI schema, and the dashboards' permission rules."""

import csv
import io
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest

from metering.shipping import ship_pending_usage

from .helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)

NOV = datetime(2026, 11, 3, tzinfo=dt_timezone.utc)
RANGE = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}


@pytest.fixture
def two_orgs(make_tenant, catalog, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    for i in range(6):
        record_attempt(acme.org, NOV + timedelta(hours=i, minutes=7), feature=("chat", "search")[i % 2],
                       model=("tollgate-mini", "tollgate-small")[i % 3 == 0], api_key_id=acme.key.pk,
                       output_tokens=10 * i)
    for i in range(3):
        record_attempt(globex.org, NOV + timedelta(days=1, hours=i), api_key_id=globex.key.pk)
    ship_pending_usage()
    return acme, globex


def test_a_manager_sees_only_their_orgs_usage(client, two_orgs):
    acme, globex = two_orgs
    client.force_login(acme.manager)
    body = client.get("/api/usage/", {**RANGE, "group_by": "org"}).json()
    assert [row["org"] for row in body["results"]] == [acme.org.pk]
    assert Decimal(body["results"][0]["cost_total"]) == ledger_total(organization=acme.org)


def test_asking_for_another_orgs_usage_is_a_404(client, two_orgs):
    acme, globex = two_orgs
    client.force_login(acme.manager)
    assert client.get("/api/usage/", {**RANGE, "org": "globex"}).status_code == 404
    assert client.get("/api/usage/events/", {**RANGE, "org": "globex"}).status_code == 404
    assert client.get("/api/usage/", {**RANGE, "org": "no-such-org"}).status_code == 404


def test_a_user_who_manages_nothing_gets_empty_results(client, two_orgs, django_user_model):
    nobody = django_user_model.objects.create_user("nobody", password="pw-for-tests")
    client.force_login(nobody)
    body = client.get("/api/usage/events/", RANGE).json()
    assert body["count"] == 0 and body["results"] == []


def test_staff_see_every_org(client, two_orgs, django_user_model):
    acme, globex = two_orgs
    admin = django_user_model.objects.create_user("admin", password="pw-for-tests", is_staff=True)
    client.force_login(admin)
    rows = client.get("/api/usage/", {**RANGE, "group_by": "org"}).json()["results"]
    assert {row["org"]: Decimal(row["cost_total"]) for row in rows} == {
        acme.org.pk: ledger_total(organization=acme.org), globex.org.pk: ledger_total(organization=globex.org)}


def test_anonymous_callers_are_refused(client, two_orgs):
    assert client.get("/api/usage/").status_code == 403


def test_group_by_feature_and_model_with_filters_matches_the_ledger(client, two_orgs):
    acme, _ = two_orgs
    client.force_login(acme.manager)
    rows = client.get("/api/usage/", {**RANGE, "group_by": "feature,model", "feature": "chat"}).json()["results"]
    assert {r["feature"] for r in rows} == {"chat"}
    for r in rows:
        assert Decimal(r["cost_total"]) == ledger_total(organization=acme.org, feature="chat",
                                                        model_served=r["model"])
        assert r["requests"] > 0
    by_key = client.get("/api/usage/", {**RANGE, "group_by": "key", "key": acme.key.pk}).json()["results"]
    assert by_key[0]["key"] == acme.key.pk and by_key[0]["requests"] == 6


def test_results_are_paginated(client, two_orgs):
    acme, _ = two_orgs
    client.force_login(acme.manager)
    first = client.get("/api/usage/events/", {**RANGE, "limit": 4}).json()
    second = client.get(first["next"]).json()
    assert first["count"] == 6 and len(first["results"]) == 4 and len(second["results"]) == 2
    ids = [r["event_id"] for r in first["results"] + second["results"]]
    assert len(set(ids)) == 6
    hours = client.get("/api/usage/", {**RANGE, "group_by": "hour", "limit": 5}).json()
    assert hours["count"] == 6 and len(hours["results"]) == 5 and hours["next"]


def test_csv_export_has_every_row_and_exact_money(client, two_orgs):
    acme, _ = two_orgs
    client.force_login(acme.manager)
    response = client.get("/api/usage/events/", {**RANGE, "format": "csv", "limit": 2})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 6  # every row, not a page
    assert sum(Decimal(r["cost_total"]) for r in rows) == ledger_total(organization=acme.org)
    grouped = client.get("/api/usage/", {**RANGE, "format": "csv", "group_by": "feature"})
    assert grouped.content.decode().splitlines()[0].startswith("feature,requests")


def test_invalid_group_by_is_a_400(client, two_orgs):
    acme, _ = two_orgs
    client.force_login(acme.manager)
    response = client.get("/api/usage/", {"group_by": "colour"})
    assert response.status_code == 400 and "group_by" in response.json()


def test_the_openapi_schema_describes_the_usage_api(client, two_orgs):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    summary = schema["paths"]["/api/usage/"]["get"]
    names = {p["name"] for p in summary["parameters"]}
    assert {"start", "end", "org", "feature", "model", "key", "user", "group_by", "limit", "offset"} <= names
    assert "/api/usage/events/" in schema["paths"]
