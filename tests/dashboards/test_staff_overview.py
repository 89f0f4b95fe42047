"""Staff see every org's spend, retry cost, savings and GPU utilization per pool; managers do not."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from dashboards.templatetags.money import percent
from metering.models import PoolRate, UsageRecord
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("ops", password="pw-for-tests", is_staff=True)


@pytest.fixture
def usage(make_tenant, catalog, clickhouse):
    # 6 GPUs, 2 per replica: 3 replicas paid for the whole 30-day window.
    PoolRate.objects.create(pool="interactive", effective_from=timezone.now() - timedelta(days=60),
                            usd_per_gpu_hour=Decimal("2.00"), gpus=6, gpus_per_replica=2)
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    for i in range(4):
        record_attempt(acme.org, now - timedelta(days=2, hours=i), pool="interactive", engine_seconds=9000.0 + i)
    record_attempt(acme.org, now - timedelta(days=1), pool="interactive", engine_seconds=30.0,
                   status=UsageRecord.Status.ERROR)
    for i in range(3):
        record_attempt(globex.org, now - timedelta(hours=5, minutes=i), model="tollgate-small", pool="interactive",
                       engine_seconds=4550.5)
    record_attempt(globex.org, now - timedelta(minutes=2), model="tollgate-large")  # the partial hour
    ship_pending_usage()
    return acme, globex


def row(html: str, attr: str, key: str) -> str:
    match = re.search(rf'<tr {attr}="{key}">(.*?)</tr>', html, re.S)
    assert match, f"no row {attr}={key}"
    return match.group(1)


def test_staff_see_spend_by_org_and_model_retry_cost_and_utilization(client, staff, usage):
    acme, globex = usage
    client.force_login(staff)
    response = client.get("/dashboards/staff/overview/")
    assert response.status_code == 200
    html = response.content.decode()

    for tenant in (acme, globex):
        billed = UsageRecord.objects.filter(organization=tenant.org).aggregate(s=Sum("cost_total"))["s"]
        retry = UsageRecord.objects.filter(organization=tenant.org).aggregate(s=Sum("cost_retry"))["s"]
        exacts = re.findall(r'data-exact="([^"]*)"', row(html, "data-org", tenant.org.slug))
        assert [Decimal(v) for v in exacts] == [billed, retry]
    for model in ("tollgate-mini", "tollgate-small", "tollgate-large"):
        billed = UsageRecord.objects.filter(model_served=model).aggregate(s=Sum("cost_total"))["s"]
        assert Decimal(re.search(r'data-exact="([^"]*)"', row(html, "data-model", model)).group(1)) == billed

    totals = UsageRecord.objects.aggregate(billed=Sum("cost_total"), retry=Sum("cost_retry"))
    assert Decimal(re.search(r'data-testid="total-billed" data-exact="([^"]*)"', html).group(1)) == totals["billed"]
    assert Decimal(re.search(r'data-testid="total-retry" data-exact="([^"]*)"', html).group(1)) == totals["retry"]
    assert totals["retry"] > 0

    # Utilization = all orgs' engine-seconds ÷ replica-seconds paid for (3 replicas × 30 days).
    engine_seconds = UsageRecord.objects.filter(pool="interactive").aggregate(s=Sum("engine_seconds"))["s"]
    expected = engine_seconds / (3 * 30 * 86400)
    shown = re.search(r'data-testid="pool-utilization">([^<]*)<', row(html, "data-pool", "interactive")).group(1)
    assert shown == percent(expected) == "0.64%"
    assert float(re.search(r'data-testid="pool-engine-seconds" data-exact="([^"]*)"',
                           row(html, "data-pool", "interactive")).group(1)) == pytest.approx(engine_seconds)
    for chart in ("spend-by-org", "spend-by-model", "cost-components", "gpu-by-pool", "pool-utilization"):
        assert f'data-chart="{chart}"' in html and f'id="{chart}-data"' in html


def test_managers_are_refused_the_staff_overview(client, usage):
    acme, _ = usage
    client.force_login(acme.manager)
    assert client.get("/dashboards/staff/overview/").status_code == 403
    # Their own dashboard does not link to it either.
    assert "staff/overview" not in client.get(f"/dashboards/{acme.org.slug}/").content.decode()


def test_anonymous_visitors_are_sent_to_log_in(client, db):
    response = client.get("/dashboards/staff/overview/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_staff_find_the_overview_on_the_dashboard_index(client, staff, make_tenant, catalog):
    make_tenant("acme")  # a single org: managers are redirected to it, staff stay on the index
    client.force_login(staff)
    response = client.get("/dashboards/")
    assert response.status_code == 200
    assert 'href="/dashboards/staff/overview/"' in response.content.decode()


def test_the_overview_reads_whole_hours_from_the_rollups_only(client, staff, usage, clickhouse):
    # The range ends at the next full hour, so even this hour's requests come from the rollups:
    # with the raw rows gone, the page still shows every org's billed spend.
    clickhouse.command("TRUNCATE TABLE usage_events")
    client.force_login(staff)
    html = client.get("/dashboards/staff/overview/").content.decode()
    billed = UsageRecord.objects.aggregate(s=Sum("cost_total"))["s"]
    assert Decimal(re.search(r'data-testid="total-billed" data-exact="([^"]*)"', html).group(1)) == billed
