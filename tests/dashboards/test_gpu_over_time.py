"""The staff GPU page draws each rated pool's utilization per hour (engine-seconds over the replica-seconds
its rate paid for) and the queue wait per hour (p50 and p95 of queue_wait_ms), from the real ClickHouse."""

import json
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import PoolRate, UsageRecord
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def figure(html: str, chart: str) -> dict:
    return json.loads(re.search(rf'<script id="{chart}-data" type="application/json">(.*?)</script>', html,
                                re.S).group(1))


def points(trace: dict) -> dict:
    return {datetime.fromisoformat(x): y for x, y in zip(trace["x"], trace["y"])}


def test_gpu_page_charts_utilization_and_queue_wait_per_hour(client, make_tenant, catalog, clickhouse,
                                                            django_user_model):
    acme = make_tenant("acme")
    now = timezone.now()
    busy = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    busier = busy - timedelta(days=1)
    # Two GPUs, one a replica: 7,200 replica-seconds paid for each hour.
    PoolRate.objects.create(pool="interactive", effective_from=now - timedelta(days=30),
                            usd_per_gpu_hour=Decimal("2.00"), gpus=2)
    for i, wait in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 100]):  # 720 engine-seconds: 10 %
        record_attempt(acme.org, busy + timedelta(minutes=i), pool="interactive", engine_seconds=72.0,
                       queue_wait_ms=float(wait))
    for i, wait in enumerate([5, 5, 5, 200]):  # 1,440 engine-seconds: 20 %
        record_attempt(acme.org, busier + timedelta(minutes=i), pool="interactive", engine_seconds=360.0,
                       queue_wait_ms=float(wait))
    # Neither waited for a slot of the pool: a cache hit (no pool) and a refusal.
    record_attempt(acme.org, busy + timedelta(minutes=30), queue_wait_ms=9000.0, cache_hit=True)
    record_attempt(acme.org, busy + timedelta(minutes=31), pool="interactive", queue_wait_ms=9000.0,
                   status=UsageRecord.Status.REFUSED, input_tokens=0, output_tokens=0)
    ship_pending_usage()

    client.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    html = client.get("/dashboards/staff/gpu/?days=7").content.decode()

    [utilization] = figure(html, "gpu-utilization-over-time")["data"]
    assert utilization["name"] == "interactive"
    by_hour = points(utilization)
    assert by_hour[busy] == pytest.approx(0.10)
    assert by_hour[busier] == pytest.approx(0.20)
    assert by_hour[busy - timedelta(hours=1)] == 0  # an idle hour is drawn as idle, not skipped
    assert len(by_hour) >= 7 * 24

    traces = {t["name"]: points(t) for t in figure(html, "queue-wait-over-time")["data"]}
    assert sorted(traces) == ["interactive p50", "interactive p95"]
    assert traces["interactive p50"] == {busier: 5.0, busy: 60.0}
    assert traces["interactive p95"] == {busier: 200.0, busy: 100.0}
