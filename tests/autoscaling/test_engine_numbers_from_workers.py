"""The engine numbers the autoscaler reads are the same from a worker's /metrics (as a remote replica
scrapes it) and from the in-process CPU engine: running, waiting, KV cache, token counters, busy time."""

from __future__ import annotations

import asyncio

from serving.engines.base import ChatMessage, GenerationRequest, SamplingParams
from serving.engines.cpu.engine import CpuEngine
from serving.engines.remote import read_engine_metrics
from serving.engines.worker import WorkerMetrics
from serving.pools import ReplicaRuntime

MINI = "tollgate-mini"
KEYS = {"running", "waiting", "kv_cache_usage", "prompt_tokens", "generation_tokens", "busy_seconds"}


def generate(engine: CpuEngine) -> None:
    async def main():
        stream = engine.stream(GenerationRequest(request_id="r1", model=MINI,
                                                 messages=(ChatMessage("user", "hello there"),),
                                                 sampling=SamplingParams(max_tokens=6, temperature=0.0)))
        async for _ in stream:
            pass

    asyncio.run(main())


def test_a_scraped_worker_and_the_in_process_engine_give_the_same_numbers():
    engine = CpuEngine(models=(MINI,))
    try:
        generate(engine)
        scraped = read_engine_metrics(WorkerMetrics(engine).render().decode())
        local = ReplicaRuntime("in-process", engine).engine_stats()
        assert KEYS <= set(scraped) and KEYS <= set(local)
        assert scraped["generation_tokens"] == local["generation_tokens"] > 0
        assert scraped["prompt_tokens"] == local["prompt_tokens"] > 0
        assert scraped["busy_seconds"] == local["busy_seconds"] > 0
        assert scraped["running"] == local["running"] == 0
    finally:
        engine.shutdown()
