"""Pools through the live gateway: remote replicas, fail-over, admission, disconnects, embeddings, accounting.

Workers are real `serve_engine --engine cpu` processes; the gateway is the
real ASGI app on uvicorn; requests come from the official openai client or
plain httpx. Nothing is faked (the CPU engine stands in for a GPU).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest

from metering.models import UsageRecord
from serving import pools

from .conftest import MINI, WorkerProcess, start_all, usage_row

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say something about budgets."}]


@pytest.fixture(scope="module")
def two_workers():
    a, b = start_all(WorkerProcess(), WorkerProcess())
    yield a, b
    a.kill(), b.kill()


def test_requests_go_to_remote_replicas_and_the_usage_row_records_pool_replica_and_timings(
        openai_client, deploy, two_workers):
    a, b = two_workers
    deploy(MINI, [a.url, b.url])

    raw = openai_client.chat.completions.with_raw_response.create(model=MINI, messages=MESSAGES, max_tokens=6,
                                                                  temperature=0)
    completion = raw.parse()
    row = usage_row(raw.headers["x-request-id"])

    assert completion.usage.completion_tokens == 6
    assert row.pool == "interactive" and row.replica in (a.url, b.url)
    assert row.output_tokens == 6 and row.engine_seconds > 0
    assert row.ttft_ms is not None and row.ttft_ms > 0
    assert row.queue_wait_ms >= 0 and row.duration_ms >= row.ttft_ms


def test_requests_sharing_a_long_prefix_go_to_the_same_replica(openai_client, deploy, two_workers):
    a, b = two_workers
    deploy(MINI, [a.url, b.url])
    system = "You answer questions about the Tollgate invoice for March in detail. " * 6

    replicas = set()
    for question in ("Why is it high?", "Who spent most?", "What changed?"):
        raw = openai_client.chat.completions.with_raw_response.create(
            model=MINI, max_tokens=2, temperature=0,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}])
        replicas.add(usage_row(raw.headers["x-request-id"]).replica)
        raw.parse()

    assert len(replicas) == 1


def test_a_killed_replica_is_taken_out_and_requests_succeed_on_the_other(openai_client, deploy):
    doomed, survivor = start_all(WorkerProcess(), WorkerProcess())
    try:
        topology = deploy(MINI, [doomed.url, survivor.url])
        doomed.kill()

        served_by = []
        # Prefix affinity spreads distinct prompts over both replicas; with 12 of them the chance that none
        # lands on the dead one (so only the periodic health check could notice it) is 1 in 4,096.
        for i in range(12):
            raw = openai_client.chat.completions.with_raw_response.create(
                model=MINI, max_tokens=3, temperature=0,
                messages=[{"role": "user", "content": f"question {i} " * (i + 1)}])
            assert raw.parse().usage.completion_tokens == 3
            served_by.append(usage_row(raw.headers["x-request-id"]).replica)

        assert set(served_by) == {survivor.url}
        replica = next(r for r in topology.deployments[MINI].replicas if r.url == doomed.url)
        assert not replica.healthy

        # The health check puts it back once it answers again.
        revived = WorkerProcess(port=doomed.port).start()
        try:
            asyncio.run(pools.probe_replicas(topology))
            assert replica.healthy
        finally:
            revived.kill()
    finally:
        doomed.kill()
        survivor.kill()


def test_a_full_pool_queue_answers_429_with_retry_after_instead_of_hanging(live_gateway, tenant, deploy):
    deploy(MINI, [""], pool="tiny", max_in_flight_per_replica=1, max_queue=1)

    def call() -> httpx.Response:
        return httpx.post(f"{live_gateway.v1}/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {tenant.plaintext}"},
                          json={"model": MINI, "messages": MESSAGES, "max_tokens": 60, "temperature": 0})

    # Checked here, in the test's thread: an assertion (or an exception) inside a worker thread is only
    # printed by the thread, it never fails the test. .result() re-raises whatever the call raised.
    with ThreadPoolExecutor(max_workers=6) as executor:
        futures = [executor.submit(call) for _ in range(6)]
        responses = [future.result(timeout=90) for future in futures]
    statuses = [response.status_code for response in responses]
    rejected = [response for response in responses if response.status_code == 429]

    assert statuses.count(200) >= 2  # one running, one waited in the queue
    assert rejected, statuses
    assert [response.json()["error"]["code"] for response in rejected] == ["queue_full"] * len(rejected)
    retry_after = [response.headers.get("Retry-After") for response in rejected]
    assert all(value and int(value) >= 1 for value in retry_after), retry_after


def test_queue_wait_is_measured_and_recorded(openai_client, deploy):
    deploy(MINI, [""], pool="single", max_in_flight_per_replica=1, max_queue=8)
    ids: list[str] = []

    def call():
        raw = openai_client.chat.completions.with_raw_response.create(model=MINI, messages=MESSAGES,
                                                                      max_tokens=30, temperature=0)
        raw.parse()
        ids.append(raw.headers["x-request-id"])

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = [usage_row(i) for i in ids]
    assert len(rows) == 3 and all(r.pool == "single" for r in rows)
    assert max(r.queue_wait_ms for r in rows) > 0  # someone waited for the single slot


def stream_then_hang_up(live_gateway, tenant) -> str:
    """Ask for a long streamed answer, read five chunks, close the connection; return the request id."""
    with httpx.stream("POST", f"{live_gateway.v1}/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {tenant.plaintext}"},
                      json={"model": MINI, "messages": MESSAGES, "max_tokens": 1000, "temperature": 0,
                            "stream": True}) as response:
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data:")
            if chunks >= 5:
                break
        return response.headers["x-request-id"]


def test_disconnecting_mid_stream_stops_the_worker_and_bills_the_tokens_sent(live_gateway, tenant, deploy,
                                                                             two_workers):
    worker = two_workers[0]
    deploy(MINI, [worker.url])
    before = worker.metrics()

    request_id = stream_then_hang_up(live_gateway, tenant)

    row = usage_row(request_id)
    time.sleep(0.5)
    settled = worker.metrics()
    time.sleep(0.5)
    later = worker.metrics()
    assert row.status == UsageRecord.Status.CANCELLED
    assert 3 <= row.output_tokens < 1000
    assert row.cost_output > 0
    assert later["running"] == 0 and later["generation_tokens"] == settled["generation_tokens"]
    assert later["generation_tokens"] - before["generation_tokens"] < 1000


def test_embeddings_are_batched_and_billed_per_input_token(openai_client, tenant):
    from serving.engines.embeddings import get_embedder

    texts = ["the budget for March", "an API key", "pools and replicas"]
    raw = openai_client.embeddings.with_raw_response.create(model="all-minilm-l6-v2", input=texts)
    result = raw.parse()
    row = usage_row(raw.headers["x-request-id"])

    embedder = get_embedder()
    assert [d.index for d in result.data] == [0, 1, 2] and len(result.data[0].embedding) == 384
    assert result.usage.prompt_tokens == embedder.count_tokens(texts)
    assert row.endpoint == "embeddings" and row.pool == "embedding"
    assert row.input_tokens == result.usage.prompt_tokens and row.output_tokens == 0
    assert row.cost_input == Decimal(row.input_tokens) * Decimal("0.02") / Decimal(1_000_000)
    assert row.engine_seconds > 0

    # Concurrent callers share forward passes.
    batches_before = len(embedder.batches)
    threads = [threading.Thread(target=openai_client.embeddings.create,
                                kwargs={"model": "all-minilm-l6-v2", "input": [f"text {i}"] * 4})
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert max(embedder.batches[batches_before:]) > 1


def test_disconnecting_mid_stream_stops_the_in_process_engine_and_bills_the_tokens_sent(live_gateway, tenant):
    from serving.engines.registry import in_process_engine

    engine = in_process_engine()
    request_id = stream_then_hang_up(live_gateway, tenant)

    row = usage_row(request_id)
    generated = engine.stats()["models"][MINI]["generation_tokens"]
    time.sleep(0.5)
    assert row.status == UsageRecord.Status.CANCELLED and row.pool == "interactive" and row.replica == "in-process"
    assert 3 <= row.output_tokens < 1000 and row.cost_output > 0
    assert engine.stats()["running"] == 0
    assert engine.stats()["models"][MINI]["generation_tokens"] == generated
