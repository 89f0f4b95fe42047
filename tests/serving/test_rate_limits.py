"""Rate limits per API key and per organization (requests and tokens per minute), over real HTTP with the
official client: 429 rate_limit_exceeded with Retry-After and OpenAI's x-ratelimit-* headers, one tenant never
costs another, a limited request costs nothing, and every answer carries the headers. Redis at REDIS_URL."""

import re
import socket
import time
from decimal import Decimal

import openai
import pytest
import redis
from django.conf import settings

from budgets.models import Budget, BudgetCounter, BudgetReservation
from metering.metrics import RATE_LIMIT_STORE_ERRORS
from metering.models import UsageRecord
from serving import ratelimits
from tenants.services import issue_api_key

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say hi."}]
RESET = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


@pytest.fixture(autouse=True)
def fresh_counters():
    """Counters of earlier tests (rows are new each test, but ids may come back) are gone."""
    if settings.TOLLGATE_RATE_LIMIT_REDIS_URL:
        client = redis.Redis.from_url(settings.TOLLGATE_RATE_LIMIT_REDIS_URL)
        for key in client.scan_iter("tollgate:ratelimit:*"):
            client.delete(key)
    ratelimits._stores.clear()
    yield
    ratelimits._stores.clear()


def limit(row, rpm=None, tpm=None):
    row.requests_per_minute, row.tokens_per_minute = rpm, tpm
    row.save()  # the signal drops the memoized key, as an admin edit does


def chat(client, **overrides):
    return client.chat.completions.with_raw_response.create(
        **{"model": "tollgate-mini", "messages": MESSAGES, "max_tokens": 4, **overrides})


def client_for(live_gateway, plaintext):
    return openai.OpenAI(base_url=live_gateway.v1, api_key=plaintext, max_retries=0, timeout=60)


def test_requests_over_a_keys_rpm_get_429_with_retry_after_and_openai_headers(openai_client, tenant):
    limit(tenant.key, rpm=2)
    chat(openai_client)
    chat(openai_client)
    with pytest.raises(openai.RateLimitError) as err:
        chat(openai_client)
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.body["type"] == "requests"
    headers = err.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 120
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert RESET.match(headers["x-ratelimit-reset-requests"])


def test_one_tenant_never_costs_another(openai_client, tenant, live_gateway, make_tenant):
    limit(tenant.org, rpm=1)
    chat(openai_client)
    with pytest.raises(openai.RateLimitError):
        chat(openai_client)
    other = make_tenant("globex")
    limit(other.org, rpm=1)
    assert chat(client_for(live_gateway, other.plaintext)).headers["x-ratelimit-remaining-requests"] == "0"


def test_a_keys_limit_leaves_the_orgs_other_keys_alone(openai_client, tenant, live_gateway):
    limit(tenant.key, rpm=1)
    second_key = issue_api_key(tenant.org, "second", default_feature=tenant.features["chat"]).plaintext
    chat(openai_client)
    with pytest.raises(openai.RateLimitError):
        chat(openai_client)
    assert chat(client_for(live_gateway, second_key)).parse().usage.completion_tokens == 4


def test_tokens_over_the_tpm_get_429_naming_tokens(openai_client, tenant):
    # Each request counts its prompt (a quarter of its characters + 4 per message) plus max_tokens: 6 + 16.
    limit(tenant.org, tpm=30)
    first = chat(openai_client, max_tokens=16)
    assert first.headers["x-ratelimit-limit-tokens"] == "30"
    assert first.headers["x-ratelimit-remaining-tokens"] == "8"
    with pytest.raises(openai.RateLimitError) as err:
        chat(openai_client, max_tokens=16)
    assert err.value.body["type"] == "tokens"
    assert err.value.response.headers["x-ratelimit-remaining-tokens"] == "8"
    assert chat(openai_client, max_tokens=2).headers["x-ratelimit-remaining-tokens"] == "0"  # a small one fits


def test_a_request_larger_than_the_tpm_is_refused_saying_so(openai_client, tenant):
    limit(tenant.key, tpm=20)
    with pytest.raises(openai.RateLimitError) as err:
        chat(openai_client, max_tokens=100)
    assert "Request too large" in err.value.message
    assert UsageRecord.objects.count() == 0


def test_a_limited_request_holds_no_budget_and_leaves_no_usage_row(openai_client, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("10"))
    limit(tenant.key, rpm=1)
    chat(openai_client)
    spent = BudgetCounter.objects.get().spent
    with pytest.raises(openai.RateLimitError):
        chat(openai_client)
    assert UsageRecord.objects.count() == 1  # the first request's; the refused one is not even a "refused" row
    counter = BudgetCounter.objects.get()
    assert (counter.spent, counter.reserved) == (spent, Decimal(0))
    assert BudgetReservation.objects.count() == 0


def test_every_answer_carries_the_headers_of_both_kinds(openai_client, tenant):
    limit(tenant.key, rpm=100, tpm=10_000)
    limit(tenant.org, rpm=50)
    headers = chat(openai_client).headers
    assert headers["x-ratelimit-limit-requests"] == "50"  # the binding one: the org's has less room
    assert headers["x-ratelimit-remaining-requests"] == "49"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert RESET.match(headers["x-ratelimit-reset-requests"]) and RESET.match(headers["x-ratelimit-reset-tokens"])


def test_a_streamed_answer_and_embeddings_are_limited_too(openai_client, tenant):
    limit(tenant.key, rpm=2)
    stream = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=MESSAGES, max_tokens=4, stream=True)
    assert stream.headers["x-ratelimit-remaining-requests"] == "1"
    list(stream.parse())
    openai_client.embeddings.create(model="all-minilm-l6-v2", input="hello")
    with pytest.raises(openai.RateLimitError):
        openai_client.embeddings.create(model="all-minilm-l6-v2", input="hello")


def test_the_embedded_default_counts_in_memory(openai_client, tenant, settings):
    settings.TOLLGATE_RATE_LIMIT_REDIS_URL = ""
    limit(tenant.key, rpm=1)
    assert chat(openai_client).headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        chat(openai_client)
    assert isinstance(ratelimits.store(), ratelimits.MemoryStore)


def test_redis_down_fails_open_and_is_counted(openai_client, tenant, settings):
    settings.TOLLGATE_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    limit(tenant.key, rpm=1)
    before = RATE_LIMIT_STORE_ERRORS._value.get()
    chat(openai_client)
    answer = chat(openai_client)  # over the limit, but the limit cannot be checked: served
    assert answer.parse().usage.completion_tokens == 4
    assert "x-ratelimit-limit-requests" not in answer.headers
    assert RATE_LIMIT_STORE_ERRORS._value.get() == before + 2


def test_without_limits_there_are_no_headers_and_no_store_call(openai_client):
    assert "x-ratelimit-limit-requests" not in chat(openai_client).headers


@pytest.mark.parametrize("ms, text", [(0, "0ms"), (120, "120ms"), (1000, "1s"), (1500, "1.5s"),
                                      (360_000, "6m0s"), (90_250, "1m30.25s"), (3_600_000, "1h0m0s")])
def test_resets_are_written_as_openai_writes_them(ms, text):
    assert ratelimits.format_duration(ms) == text


def test_new_keys_and_orgs_start_with_the_default_limits(live_gateway, make_tenant, catalog, settings):
    settings.TOLLGATE_DEFAULT_KEY_REQUESTS_PER_MINUTE = 1
    settings.TOLLGATE_DEFAULT_ORG_TOKENS_PER_MINUTE = 5000
    fresh = make_tenant("initech")
    assert (fresh.key.requests_per_minute, fresh.org.tokens_per_minute) == (1, 5000)
    client = client_for(live_gateway, fresh.plaintext)
    assert chat(client).headers["x-ratelimit-limit-tokens"] == "5000"
    with pytest.raises(openai.RateLimitError):
        chat(client)


def test_a_store_that_hangs_is_not_asked_again_for_a_moment(tenant, settings):
    # A store that times out would add its timeout to every request: after a failure, skip it for a second.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # connections complete in the kernel's backlog, and nothing ever answers
    try:
        settings.TOLLGATE_RATE_LIMIT_REDIS_URL = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        settings.TOLLGATE_RATE_LIMIT_REDIS_TIMEOUT_S = 0.2
        limits = (ratelimits.Limit("key", tenant.key.pk, ratelimits.REQUESTS, 1),)
        start = time.monotonic()
        for _ in range(10):
            assert ratelimits.admit(limits, 10).admitted
        assert time.monotonic() - start < 0.8  # one timeout (0.2 s), not ten
    finally:
        hung.close()


def test_an_idempotent_replay_counts_and_shows_this_requests_rate_limit_state(openai_client, tenant):
    limit(tenant.key, rpm=5)
    first = chat(openai_client, extra_headers={"Idempotency-Key": "rl-1"})
    again = chat(openai_client, extra_headers={"Idempotency-Key": "rl-1"})
    assert again.headers["idempotent-replayed"] == "true"
    assert (first.headers["x-ratelimit-remaining-requests"], again.headers["x-ratelimit-remaining-requests"]) == (
        "4", "3")


def test_a_limit_of_zero_refuses_everything_saying_so(openai_client, tenant):
    limit(tenant.org, rpm=0)
    with pytest.raises(openai.RateLimitError) as err:
        chat(openai_client)
    assert "may send no requests at all" in err.value.message
    assert err.value.response.headers["x-ratelimit-limit-requests"] == "0"


def test_redis_and_memory_stores_decide_alike(tenant, settings):
    """The Lua script and the in-process store are one algorithm: the same admissions, the same answers."""
    limits = (ratelimits.Limit("key", tenant.key.pk, ratelimits.REQUESTS, 4),
              ratelimits.Limit("org", tenant.org.pk, ratelimits.TOKENS, 100))
    redis_store = ratelimits.RedisStore(settings.TOLLGATE_RATE_LIMIT_REDIS_URL, timeout_s=1.0)
    memory_store = ratelimits.MemoryStore()
    if time.time() % 60 > 55:
        time.sleep(6)  # stay inside one window: both must see the same minute
    for tokens in (30, 50, 40, 10, 5, 200):
        costs = (1, tokens)
        from_redis, from_memory = redis_store.admit(limits, costs), memory_store.admit(limits, costs)
        assert (from_redis.admitted, [s.remaining for s in from_redis.states], from_redis.refused_by) == (
            from_memory.admitted, [s.remaining for s in from_memory.states], from_memory.refused_by)
        assert (from_redis.retry_after_ms < 0) == (from_memory.retry_after_ms < 0)


def test_a_refusal_after_the_rate_limit_carries_the_headers_too(openai_client, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("0"))
    limit(tenant.key, rpm=10)
    with pytest.raises(openai.RateLimitError) as err:
        chat(openai_client)
    assert err.value.code == "budget_exceeded"
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "9"
    with pytest.raises(openai.NotFoundError) as err:
        chat(openai_client, model="no-such-model")
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "8"
