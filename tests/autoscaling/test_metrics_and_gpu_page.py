"""The autoscaling signals and desired replicas on /metrics (label pool only, the same in every process: read
from the shared store at scrape time) and on the staff GPU page, with the last decisions and why."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from django.core.cache import cache
from django.utils import timezone

from autoscaling import sampling, services
from autoscaling.models import PoolScaling
from autoscaling.sampling import LatencyWindow, Sampler
from serving.pools import PoolSnapshot, ReplicaSnapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def published():
    cache.delete(sampling.INDEX_KEY)
    window = LatencyWindow()
    for _ in range(5):
        window.add("interactive", ttft_s=0.8, queue_wait_s=0.25)
    worker = ReplicaSnapshot(label="http://gpu-1:8000", url="http://gpu-1:8000", healthy=True, outstanding=3,
                             engine={"running": 3, "waiting": 2, "kv_cache_usage": 0.42})
    snapshot = PoolSnapshot(name="interactive", kind="interactive", max_in_flight_per_replica=8, in_flight=3,
                            waiting=6, admitted_total=10, replicas=(worker,))
    sampling.publish(Sampler("web-a", window).sample([snapshot]))
    yield
    cache.delete(sampling.INDEX_KEY)


def gauge(text: str, name: str, pool: str) -> float | None:
    match = re.search(rf'^{name}{{pool="{pool}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def test_metrics_show_the_pool_signals_and_the_desired_replicas(client, published):
    PoolScaling.objects.create(pool="interactive", min_replicas=1, max_replicas=4, desired_replicas=3)
    text = client.get("/metrics").content.decode()
    assert gauge(text, "tollgate_pool_desired_replicas", "interactive") == 3
    assert gauge(text, "tollgate_pool_replicas", "interactive") == 1
    assert gauge(text, "tollgate_pool_queue_depth", "interactive") == 6
    assert gauge(text, "tollgate_pool_running", "interactive") == 3
    assert gauge(text, "tollgate_pool_waiting", "interactive") == 2
    assert gauge(text, "tollgate_pool_kv_cache_usage", "interactive") == pytest.approx(0.42)
    assert gauge(text, "tollgate_pool_ttft_p95_seconds", "interactive") == pytest.approx(0.8)
    assert gauge(text, "tollgate_pool_queue_wait_p95_seconds", "interactive") == pytest.approx(0.25)
    assert gauge(text, "tollgate_pool_busy_share", "interactive") == pytest.approx(3 / 8)
    for name in ("tollgate_pool_tokens_per_second", "tollgate_pool_requests_per_second",
                 "tollgate_pool_engine_busy_share"):
        assert gauge(text, name, "interactive") is not None, name
    # Only the pool label: nothing per org, replica or process.
    assert not re.search(r'^tollgate_pool_\w+{[^}]*,', text, re.M)


def test_a_pool_without_a_decision_has_no_desired_gauge(client, published):
    text = client.get("/metrics").content.decode()
    assert gauge(text, "tollgate_pool_replicas", "interactive") == 1
    assert gauge(text, "tollgate_pool_desired_replicas", "interactive") is None


def test_the_gpu_page_shows_signals_desired_and_the_reasons(client, published, django_user_model):
    PoolScaling.objects.create(pool="interactive", min_replicas=1, max_replicas=6, ttft_p95_slo_s=0.5)
    now = timezone.now()
    signals = sampling.combined_signals(now)
    [decision] = services.recommend_replicas(signals, now=now)  # TTFT 0.8 s over 0.5 s: up
    assert decision.changed

    client.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    html = client.get("/dashboards/staff/gpu/").content.decode()
    row = re.search(r'<tr data-testid="autoscaling-pool" data-pool="interactive" data-desired="(\d+)" '
                    r'data-replicas="(\d+)">(.*?)</tr>', html, re.S)
    assert row and int(row.group(1)) == decision.desired and row.group(2) == "1"
    assert "TTFT p95 ≤ 0.5 s" in row.group(3)
    decisions = re.findall(r'data-testid="autoscaling-decision">(.*?)</tr>', html, re.S)
    assert len(decisions) == 1 and "TTFT p95 0.8 s over SLO 0.5 s" in decisions[0]
    assert 'id="desired-replicas-over-time-data"' in html


def test_desired_replicas_over_time_steps_through_the_changes(published):
    PoolScaling.objects.create(pool="interactive", min_replicas=1, max_replicas=6, ttft_p95_slo_s=0.5)
    start = timezone.now()
    signals = sampling.combined_signals(start)
    services.recommend_replicas(signals, now=start)
    series = services.desired_over_time(start.replace(minute=0, second=0, microsecond=0),
                                        datetime.now(UTC).replace(year=start.year + 1))
    counts = [n for _, n in series["interactive"]]
    assert counts[0] > 1 and counts[-1] == counts[0]


def test_in_multiprocess_mode_the_gauges_come_from_the_shared_store(client, published, settings, tmp_path,
                                                                      monkeypatch):
    # prometheus-client's multiprocess mode merges per-process files of counters; the pool gauges are not
    # among them: they are read from the shared cache at scrape time, so any process reports them all.
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # prometheus-client reads it itself
    PoolScaling.objects.create(pool="interactive", min_replicas=1, max_replicas=4, desired_replicas=2)
    text = client.get("/metrics").content.decode()
    assert gauge(text, "tollgate_pool_desired_replicas", "interactive") == 2
    assert gauge(text, "tollgate_pool_queue_depth", "interactive") == 6
