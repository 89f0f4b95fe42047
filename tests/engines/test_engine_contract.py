"""One engine contract, two engines: the in-process CPU engine and a CPU worker process over HTTP.

The worker is a real `manage.py serve_engine --engine cpu` process; the remote
side is `RemoteEngine`, the same adapter the gateway uses for vLLM workers.
No Django database is needed.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from serving.engines.base import ChatMessage, GenerationRequest, SamplingParams
from serving.engines.cpu.engine import CpuEngine
from serving.engines.remote import RemoteEngine

from .conftest import MINI

LONG_SYSTEM = ("You are the support assistant of the Tollgate gateway. Answer questions about budgets, "
               "API keys, usage records, pools, replicas and invoices briefly and precisely. ") * 3


def request(rid: str, text: str, max_tokens: int = 8, system: str = "You are terse.", **sampling) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(request_id=rid, model=MINI,
                             messages=(ChatMessage("system", system), ChatMessage("user", text)),
                             sampling=SamplingParams(max_tokens=max_tokens, **sampling))


async def collect(engine, req):
    stream = engine.stream(req)
    deltas = [d async for d in stream]
    return stream.result, deltas


@pytest.fixture(scope="module")
def local_engine():
    engine = CpuEngine(models=(MINI,))
    engine.load(MINI)
    yield engine
    engine.shutdown()


@pytest.fixture(params=["in-process", "worker-over-http"])
def engine(request, local_engine, worker):
    if request.param == "in-process":
        return local_engine
    return RemoteEngine(worker.url, [MINI])


# ------------------------------------------------------------------ the contract, on both engines


def test_deltas_add_up_to_the_usage_the_engine_counted(engine):
    result, deltas = asyncio.run(collect(engine, request("contract-1", "Name three colours.", max_tokens=8)))

    assert result.finish_reason in ("length", "stop")
    assert sum(d.token_count for d in deltas) == result.completion_tokens
    assert "".join(d.text for d in deltas) == result.text
    assert result.prompt_tokens == engine.count_prompt_tokens(MINI, request("x", "Name three colours.").messages)
    assert result.completion_tokens <= 8
    assert result.time_to_first_token_s is not None and result.time_to_first_token_s > 0
    assert result.engine_seconds > 0


def test_cancelling_mid_stream_stops_generation_and_reports_the_tokens_produced(engine):
    async def run():
        stream = engine.stream(request("contract-cancel", "Tell me a long story.", max_tokens=400))
        seen = 0
        async for delta in stream:
            seen += delta.token_count
            if seen >= 3:
                break
        await stream.cancel()
        return stream.result, seen

    result, seen = asyncio.run(run())
    assert result.finish_reason == "cancelled"
    assert seen <= result.completion_tokens < 400


def test_greedy_text_is_identical_in_process_and_over_http(local_engine, worker):
    remote = RemoteEngine(worker.url, [MINI])
    req = request("same", "What is a budget?", max_tokens=12)

    local_result, _ = asyncio.run(collect(local_engine, req))
    remote_result, _ = asyncio.run(collect(remote, req))

    assert remote_result.text == local_result.text
    assert remote_result.completion_tokens == local_result.completion_tokens
    assert remote_result.prompt_tokens == local_result.prompt_tokens


# ------------------------------------------------------------------ the worker's HTTP surface


def test_worker_speaks_the_openai_api_to_the_official_client(worker):
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0, timeout=30)

    assert MINI in [m.id for m in client.models.list()]
    chat = client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                          temperature=0)
    assert chat.usage.completion_tokens == 5 and chat.choices[0].finish_reason == "length"

    chunks = list(client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content

    text = client.completions.create(model=MINI, prompt="Once upon a time", max_tokens=4, temperature=0)
    assert text.usage.completion_tokens == 4 and text.choices[0].text

    emb = client.embeddings.create(model="all-minilm-l6-v2", input=["a budget", "an invoice"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    assert emb.usage.prompt_tokens > 2


def test_worker_metrics_use_vllm_names(worker):
    text = httpx.get(f"{worker.url}/metrics", timeout=5).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:time_per_output_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket"):
        assert name in text, name


def test_prefix_cache_hits_show_in_metrics_and_in_cached_tokens(worker):
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0, timeout=30)
    before = worker.metrics()

    first = client.chat.completions.create(model=MINI, max_tokens=2, temperature=0, messages=[
        {"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "What is a pool?"}])
    second = client.chat.completions.create(model=MINI, max_tokens=2, temperature=0, messages=[
        {"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "What is a replica?"}])

    after = worker.metrics()
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens > 64
    assert cached >= 48 and cached % 16 == 0
    assert after["prefix_cache_hits"] - before["prefix_cache_hits"] >= cached
    assert after["prefix_cache_queries"] - before["prefix_cache_queries"] == (
        first.usage.prompt_tokens + second.usage.prompt_tokens)


def test_a_prefix_cache_hit_gives_the_same_greedy_text_as_computing_the_prompt():
    cached = CpuEngine(models=(MINI,), enable_prefix_caching=True)
    plain = CpuEngine(models=(MINI,), enable_prefix_caching=False)
    try:
        warm = request("warm", "What is a pool?", system=LONG_SYSTEM, max_tokens=2)
        asyncio.run(collect(cached, warm))
        req = request("hit", "What is a replica?", system=LONG_SYSTEM, max_tokens=16)
        hit, _ = asyncio.run(collect(cached, req))
        miss, _ = asyncio.run(collect(plain, req))
    finally:
        cached.shutdown()
        plain.shutdown()
    assert hit.cached_prompt_tokens >= 48 and miss.cached_prompt_tokens == 0
    assert hit.text == miss.text


def test_a_closed_http_stream_cancels_generation_on_the_worker(worker):
    before = worker.metrics()
    with httpx.stream("POST", f"{worker.url}/v1/chat/completions", timeout=30, json={
        "model": MINI, "messages": [{"role": "user", "content": "go on forever"}], "max_tokens": 1500,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }) as response:
        lines = 0
        for line in response.iter_lines():
            lines += line.startswith("data:")
            if lines >= 4:
                break
    time.sleep(0.5)
    settled = worker.metrics()
    time.sleep(0.5)
    later = worker.metrics()
    assert later["running"] == 0
    assert later["generation_tokens"] == settled["generation_tokens"]  # nothing is generating any more
    assert later["generation_tokens"] - before["generation_tokens"] < 1500


# ------------------------------------------------------------------ engine-seconds


def test_engine_seconds_of_all_requests_add_up_to_engine_busy_time():
    engine = CpuEngine(models=(MINI,), max_num_seqs=8)

    async def run():
        reqs = [request(f"busy-{i}", f"question number {i} " * (1 + i % 5), max_tokens=4 + i % 7)
                for i in range(12)]
        return await asyncio.gather(*(collect(engine, r) for r in reqs))

    try:
        results = asyncio.run(run())
    finally:
        engine.shutdown()
    total = sum(r.engine_seconds for r, _ in results)
    assert total == pytest.approx(engine.busy_seconds, rel=1e-9, abs=1e-9)
    assert any(len(step.request_ids) > 1 for step in engine.step_log)  # they really shared steps


def test_engine_seconds_reported_by_a_worker_add_up_to_its_busy_time(worker):
    remote = RemoteEngine(worker.url, [MINI])
    before = worker.metrics()["busy_seconds"]

    async def run():
        return await asyncio.gather(*(collect(remote, request(f"w-busy-{i}", f"q {i} " * (i + 1), max_tokens=6))
                                      for i in range(6)))

    results = asyncio.run(run())
    spent = worker.metrics()["busy_seconds"] - before
    assert sum(r.engine_seconds for r, _ in results) == pytest.approx(spent, rel=1e-6, abs=1e-6)


def test_a_request_submitted_during_a_decode_joins_the_running_batch(local_engine):
    async def run():
        first = local_engine.stream(request("join-first", "a long answer please", max_tokens=40))
        second = local_engine.stream(request("join-second", "short", max_tokens=5))
        got = 0
        second_task = None
        async for delta in first:
            got += delta.token_count
            if got == 5 and second_task is None:
                second_task = asyncio.ensure_future(collect_stream(second))
        await second_task

    async def collect_stream(stream):
        return [d async for d in stream]

    asyncio.run(run())
    log = list(local_engine.step_log)
    first_steps = [s for s in log if "join-first" in s.request_ids]
    joined = [s for s in log if s.kind == "decode" and {"join-first", "join-second"} <= set(s.request_ids)]
    prefill = next(s for s in log if s.kind == "prefill" and "join-second" in s.request_ids)
    assert prefill.request_ids == ("join-second",)  # admitted while the first was decoding ...
    assert first_steps[0].index < prefill.index < first_steps[-1].index
    assert joined  # ... and decoded in the same steps from then on
