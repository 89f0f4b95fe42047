"""Failures that cost nothing extra: retries, the retry budget and circuit breakers, through the live gateway.

The worker behind each replica is a real `serve_engine` process; a fault-injecting
proxy (tests/faults.py) stands in for the failures a fleet produces
(overloaded 503s, reset connections, a worker dying mid-stream).
"""

from __future__ import annotations

import re
import time
from decimal import Decimal

import httpx
import openai
import pytest

from metering.models import UsageRecord

from .conftest import MINI, WorkerProcess
from tests.faults import CUT_AFTER_FIRST_TOKEN, OVERLOADED, RESET, FaultyProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def worker_process():
    w = WorkerProcess().start()
    yield w
    w.kill()


@pytest.fixture
def proxies(worker_process):
    made: list[FaultyProxy] = []

    def make(n: int) -> list[FaultyProxy]:
        made.extend(FaultyProxy(worker_process.url).start() for _ in range(n))
        return made[-n:]

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def quick_retries(settings):
    settings.TOLLGATE_RETRY_BACKOFF_BASE_MS = 1
    settings.TOLLGATE_RETRY_BACKOFF_MAX_MS = 5
    return settings


def rows(request_id: str) -> list[UsageRecord]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = list(UsageRecord.objects.filter(request_id=request_id).order_by("retry_attempt"))
        if found and any(r.status != UsageRecord.Status.ERROR for r in found):
            return found
        time.sleep(0.05)
    return list(UsageRecord.objects.filter(request_id=request_id).order_by("retry_attempt"))


def ask(client, i: int, **kwargs):
    return client.chat.completions.with_raw_response.create(
        model=MINI, max_tokens=3, temperature=0, messages=[{"role": "user", "content": f"question {i} " * (i % 7 + 1)}],
        **kwargs)


def circuit_state(live_gateway, replica_url: str) -> float | None:
    text = httpx.get(f"{live_gateway.url}/metrics", timeout=10).text
    pattern = rf'tollgate_replica_circuit_state\{{pool="interactive",replica="{re.escape(replica_url)}"\}} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def test_a_reset_connection_is_retried_on_the_other_replica_and_recorded_as_unbilled_retry_cost(
        openai_client, deploy, proxies, quick_retries):
    broken, healthy = proxies(2)
    broken.mode = RESET
    deploy(MINI, [broken.url, healthy.url])

    for i in range(30):  # until one request's first try lands on the broken replica
        before = broken.generations
        raw = ask(openai_client, i)
        assert raw.parse().usage.completion_tokens == 3
        if broken.generations > before:
            break
    else:
        pytest.fail("no request was routed to the broken replica first")

    failed, answered = rows(raw.headers["x-request-id"])
    assert (failed.status, failed.attempt_kind, failed.replica, failed.retry_attempt) == (
        UsageRecord.Status.ERROR, UsageRecord.AttemptKind.PRIMARY, broken.url, 0)
    assert (answered.status, answered.attempt_kind, answered.replica, answered.retry_attempt) == (
        UsageRecord.Status.OK, UsageRecord.AttemptKind.RETRY, healthy.url, 1)
    assert failed.cost_total == 0 and failed.cost_base == 0
    assert raw.headers["x-tollgate-attempts"] == "2"
    assert Decimal(raw.headers["x-tollgate-cost"]) == answered.cost_total > 0


def test_an_overloaded_single_replica_is_retried_after_backoff(openai_client, deploy, proxies, quick_retries):
    (only,) = proxies(1)
    only.mode, only.fail_next = OVERLOADED, 1
    deploy(MINI, [only.url])

    raw = ask(openai_client, 1)

    assert raw.parse().usage.completion_tokens == 3
    assert only.generations == 2
    failed, answered = rows(raw.headers["x-request-id"])
    assert failed.error_code == "engine_error" and failed.cost_total == 0
    assert answered.attempt_kind == UsageRecord.AttemptKind.RETRY and answered.replica == only.url


def test_nothing_is_retried_once_a_token_reached_the_caller(openai_client, deploy, proxies, quick_retries):
    (dying,) = proxies(1)
    dying.mode = CUT_AFTER_FIRST_TOKEN
    deploy(MINI, [dying.url])

    received = []
    with pytest.raises(openai.APIError):
        for chunk in openai_client.chat.completions.create(
                model=MINI, max_tokens=20, temperature=0, stream=True,
                messages=[{"role": "user", "content": "Tell me about retries."}]):
            received.extend(c.delta.content for c in chunk.choices if c.delta.content)

    assert received, "the first token reached the caller before the worker died"
    assert dying.generations == 1
    (only_row,) = UsageRecord.objects.filter(model_served=MINI, replica=dying.url)
    assert only_row.status == UsageRecord.Status.ERROR and only_row.attempt_kind == UsageRecord.AttemptKind.PRIMARY


def test_a_failing_replica_opens_its_circuit_is_skipped_and_a_half_open_probe_closes_it(
        live_gateway, openai_client, deploy, proxies, quick_retries):
    quick_retries.TOLLGATE_BREAKER_FAILURES = 2
    quick_retries.TOLLGATE_BREAKER_OPEN_S = 4.0  # long enough for the requests below on a busy machine
    quick_retries.TOLLGATE_RETRY_BUDGET_MIN = 100
    failing, healthy = proxies(2)
    failing.mode = OVERLOADED
    deploy(MINI, [failing.url, healthy.url])

    for i in range(60):
        assert ask(openai_client, i).parse().usage.completion_tokens == 3
        if failing.generations >= 2:
            break
    assert failing.generations == 2
    assert circuit_state(live_gateway, failing.url) == 2  # open

    for i in range(60, 68):  # while open nothing is sent to it, whatever the prefix prefers
        assert ask(openai_client, i).parse().usage.completion_tokens == 3
    assert failing.generations == 2

    failing.mode = "pass"
    time.sleep(4.1)
    for i in range(100, 160):  # half-open: the first request that chooses it is the probe
        raw = ask(openai_client, i)
        if failing.generations > 2:
            break
    assert failing.generations == 3
    assert rows(raw.headers["x-request-id"])[-1].replica == failing.url
    assert circuit_state(live_gateway, failing.url) == 0  # closed again


def test_the_retry_budget_turns_an_outage_into_fast_errors_not_a_retry_storm(
        live_gateway, openai_client, deploy, proxies, quick_retries):
    quick_retries.TOLLGATE_RETRY_BUDGET_MIN = 2
    quick_retries.TOLLGATE_RETRY_BUDGET_RATIO = 0.0
    quick_retries.TOLLGATE_BREAKER_FAILURES = 1000  # breakers out of the way: the budget alone decides
    quick_retries.TOLLGATE_BREAKER_MIN_CALLS = 1000
    a, b = proxies(2)
    a.mode = b.mode = OVERLOADED
    deploy(MINI, [a.url, b.url])

    for i in range(6):
        with pytest.raises(openai.InternalServerError) as failed:
            ask(openai_client, i)
        assert failed.value.status_code == 503

    assert a.generations + b.generations == 6 + 2  # one try each, plus the budget's two retries
    assert UsageRecord.objects.filter(status=UsageRecord.Status.ERROR).count() == 8
    assert UsageRecord.objects.exclude(cost_total=0).count() == 0
    text = httpx.get(f"{live_gateway.url}/metrics", timeout=10).text
    assert re.search(r'tollgate_retries_total\{outcome="budget_exhausted",pool="interactive"\} [1-9]', text)


def test_with_every_circuit_open_a_request_fails_fast_with_retry_after_and_costs_nothing(
        live_gateway, tenant, deploy, proxies, quick_retries):
    quick_retries.TOLLGATE_BREAKER_FAILURES = 1
    quick_retries.TOLLGATE_BREAKER_OPEN_S = 30
    (only,) = proxies(1)
    only.mode = OVERLOADED
    deploy(MINI, [only.url])
    client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0)

    with pytest.raises(openai.InternalServerError):
        ask(client, 1)  # its failure opens the circuit; its retry finds it open
    assert only.generations == 1
    rows_before = UsageRecord.objects.count()

    with pytest.raises(openai.InternalServerError) as refused:
        ask(client, 2)

    assert refused.value.status_code == 503
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 30
    assert only.generations == 1  # nothing was sent to the replica
    assert UsageRecord.objects.count() == rows_before  # and nothing ran, so no usage row
