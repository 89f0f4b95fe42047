"""A web process samples its real pools: requests through the live gateway to the in-process CPU engine show
up as request and token rates, running sequences, and the TTFT and queue wait of their ledger rows."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from autoscaling import sampling
from serving.pools import pool_snapshots

pytestmark = pytest.mark.django_db(transaction=True)


def test_requests_to_the_cpu_engine_show_in_the_interactive_pools_signals(openai_client):
    cache.delete(sampling.INDEX_KEY)
    sampling.latencies.clear()
    sampler = sampling.Sampler("live-test")
    sampler.sample()  # the counters before
    for i in range(3):
        openai_client.chat.completions.create(model="tollgate-mini", max_tokens=8,
                                              messages=[{"role": "user", "content": f"count to {i}"}])
    sampling.publish(sampler.sample())
    s = sampling.combined_signals()["interactive"]
    assert s.replicas == 1  # this process's in-process engine
    assert s.requests_per_s > 0 and s.tokens_per_s > 0
    assert s.ttft_p95_s is not None and s.ttft_p95_s > 0  # from the three ledger rows
    assert s.capacity_per_replica > 0 and s.queue_depth == 0
    assert 0 < s.engine_busy_share <= 1  # the CPU engine's forward steps took time
    cpu = next(r for p in pool_snapshots() if p.name == "interactive" for r in p.replicas)
    assert {"running", "waiting", "kv_cache_usage", "prompt_tokens", "generation_tokens",
            "busy_seconds"} <= set(cpu.engine)
    cache.delete(sampling.INDEX_KEY)
