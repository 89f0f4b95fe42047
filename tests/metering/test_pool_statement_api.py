"""/api/pools/<pool>/statement/: staff only, the same statement as the command, in the OpenAPI schema."""

import io
import json
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.core.management import call_command

from metering.models import ChargebackMode, ChargebackPolicy, PoolRate

from .helpers import record_attempt

pytestmark = pytest.mark.django_db

NOV = datetime(2026, 11, 1, tzinfo=dt_timezone.utc)
URL = "/api/pools/interactive/statement/"


@pytest.fixture
def pool_usage(make_tenant, catalog):
    PoolRate.objects.create(pool="interactive", effective_from=NOV - timedelta(days=60),
                            usd_per_gpu_hour=Decimal("3.10"), gpus=3)
    acme, globex = make_tenant("acme"), make_tenant("globex")
    ChargebackPolicy.objects.create(organization=acme.org, mode=ChargebackMode.GPU_SHARED)
    ChargebackPolicy.objects.create(organization=globex.org, mode=ChargebackMode.GPU_SHARED)
    for i, seconds in enumerate([3.3, 17.17, 0.7, 2222.2]):
        record_attempt((acme, globex)[i % 2].org, NOV + timedelta(days=2 * i), pool="interactive",
                       engine_seconds=seconds)
    return acme, globex


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("ops", password="pw-for-tests", is_staff=True))
    return client


def test_staff_get_a_statement_whose_lines_add_up(staff, pool_usage):
    response = staff.get(URL, {"period": "2026-11"})
    assert response.status_code == 200
    body = response.json()
    assert Decimal(body["total"]) == Decimal("3.10") * 3 * 720
    # Every org shares idle time here, so the orgs carry the whole cost and the platform none of it.
    assert sum(Decimal(line["charge"]) for line in body["lines"]) == Decimal(body["total"])
    assert Decimal(body["platform_overhead"]) == 0
    assert {line["org"] for line in body["lines"]} == {"acme", "globex"}
    for line in body["lines"]:
        assert Decimal(line["used"]) + Decimal(line["idle_share"]) == Decimal(line["charge"])


def test_the_api_and_the_command_give_the_same_statement(staff, pool_usage):
    out = io.StringIO()
    call_command("pool_statement", "--pool", "interactive", "--period", "2026-11", "--format", "json", stdout=out)
    assert staff.get(URL, {"period": "2026-11"}).json() == json.loads(out.getvalue())
    by_range = staff.get(URL, {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}).json()
    assert by_range == json.loads(out.getvalue())


def test_managers_and_anonymous_callers_are_refused(client, pool_usage):
    acme, _ = pool_usage
    assert client.get(URL, {"period": "2026-11"}).status_code in (401, 403)
    client.force_login(acme.manager)
    response = client.get(URL, {"period": "2026-11"})
    assert response.status_code == 403
    assert "charge" not in response.content.decode()


@pytest.mark.parametrize("params, status", [
    ({}, 400),
    ({"period": "2026-13"}, 400),
    ({"period": "Nov"}, 400),
    ({"period": "2026-11", "start": "2026-11-01T00:00:00Z"}, 400),
    ({"start": "2026-12-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, 400),
])
def test_bad_periods_are_400(staff, pool_usage, params, status):
    assert staff.get(URL, params).status_code == status


def test_an_unknown_pool_is_404(staff, pool_usage):
    assert staff.get("/api/pools/no-such-pool/statement/", {"period": "2026-11"}).status_code == 404


def test_the_endpoint_is_in_the_openapi_schema(staff):
    schema = staff.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/pools/{pool}/statement/"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"pool", "period", "start", "end"}
    body = schema["components"]["schemas"]["PoolStatementBody"]
    assert {"total", "used", "idle", "lines", "platform_overhead", "utilization"} <= set(body["properties"])
