"""Signals from several web processes, through the real Redis-backed cache, combine into one per pool:
counts add up, a worker every process scrapes counts once, p95s come from every process's values, and a
process's sample carries a TTL so a dead one drops out."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from autoscaling import sampling
from autoscaling.sampling import LatencyWindow, Sampler
from serving.pools import PoolSnapshot, ReplicaSnapshot


@pytest.fixture(autouse=True)
def empty_store(settings):
    assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache"), "these tests need REDIS_URL"
    cache.delete_many([sampling.INDEX_KEY])
    yield
    cache.delete_many([sampling.INDEX_KEY])


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def worker(healthy=True, running=4, waiting=1, kv=0.3, prompt=0.0, generated=0.0, busy=0.0):
    return ReplicaSnapshot(label="http://gpu-1:8000", url="http://gpu-1:8000", healthy=healthy, outstanding=running,
                           engine={"running": running, "waiting": waiting, "kv_cache_usage": kv,
                                   "prompt_tokens": prompt, "generation_tokens": generated, "busy_seconds": busy})


def pool(in_flight, waiting, admitted, replicas):
    return [PoolSnapshot(name="interactive", kind="interactive", max_in_flight_per_replica=8, in_flight=in_flight,
                         waiting=waiting, admitted_total=admitted, replicas=tuple(replicas))]


def test_two_processes_combine_into_one_pool_signal():
    clocks = Clock(), Clock()
    windows = LatencyWindow(), LatencyWindow()
    a = Sampler("web-a", windows[0], clock=clocks[0])
    b = Sampler("web-b", windows[1], clock=clocks[1])
    for i in range(9):
        windows[0].add("interactive", ttft_s=0.2, queue_wait_s=0.01)
    windows[1].add("interactive", ttft_s=4.0, queue_wait_s=2.0)  # one slow request, in the other process

    # First samples set the counters; ten seconds later each process has admitted 50 more requests and the
    # shared worker made 2 000 more tokens (both processes scrape the same counters).
    a.sample(pool(0, 0, 100, [worker(prompt=0, generated=0, busy=0)]))
    b.sample(pool(0, 0, 300, [worker(prompt=0, generated=0, busy=0)]))
    for c in clocks:
        c.now += 10
    sampling.publish(a.sample(pool(5, 7, 150, [worker(prompt=1000, generated=1000, busy=8.0)])))
    sampling.publish(b.sample(pool(3, 5, 350, [worker(prompt=1000, generated=1000, busy=8.0)])))

    samples = sampling.published_samples()
    assert sorted(s["process"] for s in samples) == ["web-a", "web-b"]
    s = sampling.combine(samples)["interactive"]
    assert s.queue_depth == 12  # both admission queues
    assert s.requests_per_s == pytest.approx(10.0)  # 5 + 5 a second
    assert s.replicas == 1  # the worker both processes see is one replica
    assert s.tokens_per_s == pytest.approx(200.0)  # counted once, not twice
    assert s.running == 4 and s.waiting == 1 and s.kv_cache_usage == pytest.approx(0.3)
    assert s.engine_busy_share == pytest.approx(0.8)
    assert s.busy_share == pytest.approx(1.0)  # 8 in flight on one replica of 8 slots
    assert s.ttft_p95_s == pytest.approx(4.0)  # 10 values: the p95 is the slowest, from the other process
    assert s.queue_wait_p95_s == pytest.approx(2.0)
    assert s.capacity_per_replica == 8


def test_in_process_engines_are_one_replica_per_process():
    local = ReplicaSnapshot(label="in-process", url="", healthy=True, outstanding=0,
                            engine={"running": 1, "waiting": 0})
    for name in ("web-a", "web-b", "web-c"):
        sampling.publish(Sampler(name, LatencyWindow()).sample(pool(1, 0, 0, [local])))
    s = sampling.combined_signals()["interactive"]
    assert s.replicas == 3 and s.running == 3


def test_a_replica_down_everywhere_is_not_ready():
    sampling.publish(Sampler("web-a", LatencyWindow()).sample(pool(0, 0, 0, [worker(healthy=False)])))
    sampling.publish(Sampler("web-b", LatencyWindow()).sample(pool(0, 0, 0, [worker(healthy=False)])))
    assert sampling.combined_signals()["interactive"].replicas == 0


def test_each_process_sample_expires_on_its_own():
    sample = Sampler("web-a", LatencyWindow()).sample(pool(0, 0, 0, [worker()]))
    sampling.publish(sample)
    key = cache.make_and_validate_key(sampling.SAMPLE_KEY.format("web-a"))
    ttl = cache._cache.get_client(key).ttl(key)
    assert 0 < ttl <= sampling.sample_ttl_s()
    cache.delete(sampling.SAMPLE_KEY.format("web-a"))  # what the TTL does when the process stops publishing
    assert sampling.published_samples() == []
    assert sampling.combined_signals() == {}
