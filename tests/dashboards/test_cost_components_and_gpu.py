"""The org dashboard shows base, retry and escalation cost, savings as not billed, cache hits and GPU time,
and every number equals the ledger's sum (read from ClickHouse after shipping)."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
import uuid6
from django.db.models import Count, Q, Sum
from django.utils import timezone

from metering import pricing
from metering.models import ChargebackMode, ChargebackPolicy, PoolRate, UsageRecord
from metering.services import UsageDraft, record_usage
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def exact(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*data-exact="([^"]*)"', html)
    assert match, f"no {testid} with an exact value on the page"
    return match.group(1)


def pool_row(html: str, pool: str) -> dict:
    match = re.search(rf'<tr data-pool="{pool}">(.*?)</tr>', html, re.S)
    assert match, f"no row for pool {pool!r}"
    row = match.group(1)
    return {testid: value for testid, value in re.findall(r'data-testid="([^"]+)" data-exact="([^"]*)"', row)}


@pytest.fixture
def pools(db):
    since = timezone.now() - timedelta(days=90)
    PoolRate.objects.create(pool="interactive", effective_from=since, usd_per_gpu_hour=Decimal("2.50"), gpus=4,
                            gpus_per_replica=2)
    PoolRate.objects.create(pool="batch", effective_from=since, usd_per_gpu_hour=Decimal("1.20"), gpus=8)


def cache_hit(org, at, savings: str) -> UsageRecord:
    return record_usage(UsageDraft(
        request_id=uuid6.uuid7().hex, org_id=org.pk, created_at=at, model_requested="tollgate-mini",
        model_served="tollgate-mini", feature="chat", attempt_kind=UsageRecord.AttemptKind.CACHE_HIT,
        cache_hit=True, savings_cache=Decimal(savings),
    ))


def record_mixed_usage(org, now):
    """Every kind of attempt, on whole hours and in the current partial hour (read from the raw table)."""
    days_ago = now - timedelta(days=3, minutes=17)
    record_attempt(org, days_ago, pool="interactive", engine_seconds=1.25, output_tokens=40)
    record_attempt(org, days_ago + timedelta(hours=1), pool="interactive", engine_seconds=0.75,
                   status=UsageRecord.Status.ERROR)  # a failed attempt: retry cost, not billed
    record_attempt(org, days_ago + timedelta(hours=2), pool="interactive", engine_seconds=2.5,
                   model="tollgate-small", discarded=True)  # thrown away for a stronger model: escalation
    record_attempt(org, days_ago + timedelta(hours=2), pool="batch", engine_seconds=10.0, model="tollgate-large")
    record_attempt(org, now - timedelta(minutes=1), pool="batch", engine_seconds=3.5, output_tokens=7)
    record_attempt(org, now - timedelta(minutes=1), status=UsageRecord.Status.REFUSED, input_tokens=0,
                   output_tokens=0)
    cache_hit(org, days_ago + timedelta(hours=5), "0.000321000")
    cache_hit(org, now - timedelta(seconds=30), "0.000100500")
    record_attempt(org, days_ago + timedelta(hours=6), pool="interactive", engine_seconds=0.5)


def ledger_sums(org, start, end) -> dict:
    rows = UsageRecord.objects.filter(organization=org, created_at__gte=start, created_at__lt=end)
    sums = rows.aggregate(base=Sum("cost_base"), retry=Sum("cost_retry"), escalation=Sum("cost_escalation"),
                          billed=Sum("cost_total"), savings_cache=Sum("savings_cache"),
                          savings_tokens=Sum("savings_tokens"),
                          hits=Count("pk", filter=Q(cache_hit=True)),
                          answered=Count("pk", filter=Q(status__in=["ok", "cancelled"])))
    return {k: (v if v is not None else Decimal(0)) for k, v in sums.items()}


def test_cost_components_and_cache_hits_equal_the_ledger(client, make_tenant, catalog, pools, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    record_mixed_usage(acme.org, now)
    record_mixed_usage(globex.org, now)  # another org's usage must not leak into acme's numbers
    # Tokens removed by optimization: priced at the input price by metering (a counterfactual saving).
    entry = pricing.catalog_entry("tollgate-small", now)
    record_usage(UsageDraft(request_id="saved", org_id=acme.org.pk, created_at=now - timedelta(days=1),
                            model_requested="tollgate-small", model_served="tollgate-small", input_tokens=100,
                            tokens_saved=12_345, price_id=entry.price_id))
    ship_pending_usage()

    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/").content.decode()
    ledger = ledger_sums(acme.org, now - timedelta(days=30), now + timedelta(seconds=1))

    assert ledger["retry"] > 0 and ledger["escalation"] > 0 and ledger["savings_cache"] > 0
    assert ledger["savings_tokens"] > 0
    assert Decimal(exact(html, "component-base")) == ledger["base"]
    assert Decimal(exact(html, "component-escalation")) == ledger["escalation"]
    assert Decimal(exact(html, "component-retry")) == ledger["retry"]
    assert Decimal(exact(html, "component-savings-cache")) == ledger["savings_cache"]
    assert Decimal(exact(html, "component-savings-tokens")) == ledger["savings_tokens"]
    assert Decimal(exact(html, "component-billed")) == ledger["billed"] == ledger["base"] + ledger["escalation"]

    rate = re.search(r'data-testid="cache-hit-rate" data-hits="(\d+)" data-answered="(\d+)">([^<]*)<', html)
    assert (int(rate.group(1)), int(rate.group(2))) == (ledger["hits"], ledger["answered"]) == (2, 8)
    assert rate.group(3) == "25.0%"  # 2 of 8 answered attempts (the failed and the refused one left out)

    # What is not billed says so, next to its amount.
    table = re.search(r'<table data-testid="cost-components">(.*?)</table>', html, re.S).group(1)
    for testid in ("component-retry", "component-savings-cache", "component-savings-tokens"):
        row = re.search(rf'<tr>[^\n]*data-testid="{testid}"[^\n]*</tr>', table).group(0)
        assert "not billed" in row
    for testid in ("component-base", "component-escalation"):
        row = re.search(rf'<tr>[^\n]*data-testid="{testid}"[^\n]*</tr>', table).group(0)
        assert "not billed" not in row and "billed" in row


def test_gpu_time_per_pool_equals_the_ledger(client, make_tenant, catalog, pools, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    record_mixed_usage(acme.org, now)
    record_mixed_usage(globex.org, now)
    ship_pending_usage()

    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/").content.decode()
    for pool in ("interactive", "batch"):
        rows = UsageRecord.objects.filter(organization=acme.org, pool=pool)
        ledger = rows.aggregate(seconds=Sum("engine_seconds"), gpu=Sum("cost_gpu"))
        shown = pool_row(html, pool)
        assert float(shown["pool-engine-seconds"]) == pytest.approx(ledger["seconds"], rel=1e-12)
        assert Decimal(shown["pool-gpu-cost"]) == ledger["gpu"] > 0
    # This org pays token prices, so its GPU cost is shown for reference only.
    assert "shown for reference and not billed" in html


def test_an_org_charged_by_gpu_time_is_told_its_gpu_cost_is_billed(client, make_tenant, catalog, pools, clickhouse):
    acme = make_tenant("acme")
    ChargebackPolicy.objects.create(organization=acme.org, mode=ChargebackMode.GPU_SHARED)
    record_attempt(acme.org, timezone.now() - timedelta(hours=3), pool="batch", engine_seconds=60.0)
    ship_pending_usage()
    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/").content.decode()
    assert "charged by GPU time" in html
    assert Decimal(pool_row(html, "batch")["pool-gpu-cost"]) == Decimal("0.020000000")  # 60 s × $1.20/h
    assert Decimal(exact(html, "component-billed")) == Decimal("0.020000000")


def test_an_org_without_usage_gets_empty_panels_not_an_error(client, tenant, clickhouse):
    client.force_login(tenant.manager)
    response = client.get(f"/dashboards/{tenant.org.slug}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "No GPU time in this period." in html
    assert Decimal(exact(html, "component-billed")) == 0
    assert 'data-chart="cost-components"' in html and 'data-chart="gpu-by-pool"' in html
