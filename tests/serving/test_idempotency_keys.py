"""Idempotency-Key (Stripe's semantics): a repeat replays the first answer and is not billed again; the same
key with another request is a 422; a repeat while the first still runs is a 409; keys are per organization."""

import hashlib

import httpx
import openai
import pytest
from django.core.cache import cache

from budgets.models import Budget
from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Write one line about ledgers."}]


@pytest.fixture(autouse=True)
def no_keys_from_earlier_tests():
    cache.clear()


def create(client, key: str, **overrides):
    request = {"model": "tollgate-mini", "messages": MESSAGES, "max_tokens": 6, **overrides}
    return client.chat.completions.with_raw_response.create(**request, extra_headers={"Idempotency-Key": key})


def test_a_repeat_replays_the_first_answer_and_is_not_billed_again(openai_client):
    first = create(openai_client, "order-1")
    second = create(openai_client, "order-1")

    assert second.parse().id == first.parse().id
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["x-tollgate-cost"] == "0"
    assert "idempotent-replayed" not in first.headers
    assert UsageRecord.objects.count() == 1  # one answer generated, one billed


def test_the_same_key_with_another_request_is_a_422(openai_client):
    create(openai_client, "order-2")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        create(openai_client, "order-2", max_tokens=7)
    assert err.value.code == "idempotency_key_reused"
    assert UsageRecord.objects.count() == 1


def test_a_repeat_while_the_first_still_runs_is_a_409(openai_client, tenant):
    # The key as a first request holds it while it generates (in this or another web process).
    request = dict(model="tollgate-mini", messages=MESSAGES, max_tokens=6)
    create(openai_client, "order-4")  # finished: its answer is kept
    key = f"tollgate:idempotency:{tenant.org.pk}:{hashlib.sha256(b'order-4').hexdigest()}"
    kept = cache.get(key)
    cache.set(key, {"state": "running", "fingerprint": kept["fingerprint"]}, timeout=60)
    with pytest.raises(openai.ConflictError) as err:
        openai_client.chat.completions.create(**request, extra_headers={"Idempotency-Key": "order-4"})
    assert err.value.code == "idempotency_key_in_use"


def test_keys_belong_to_one_organization(openai_client, live_gateway, make_tenant):
    other = make_tenant("globex")
    theirs = openai.OpenAI(base_url=live_gateway.v1, api_key=other.plaintext, max_retries=0)
    mine = create(openai_client, "shared-key").parse()
    their_answer = create(theirs, "shared-key")
    assert "idempotent-replayed" not in their_answer.headers  # never another org's answer
    assert their_answer.parse().id != mine.id
    assert UsageRecord.objects.filter(organization=other.org).count() == 1


def test_a_failed_first_request_gives_its_key_back(openai_client, tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=0)
    with pytest.raises(openai.RateLimitError):
        create(openai_client, "order-5")
    budget.delete()
    retried = create(openai_client, "order-5")  # runs, rather than replaying the refusal
    assert "idempotent-replayed" not in retried.headers
    assert retried.parse().usage.completion_tokens == 6


def test_embeddings_replay_too(live_gateway, tenant):
    def embed():
        return httpx.post(f"{live_gateway.v1}/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"},
                          headers={"Authorization": f"Bearer {tenant.plaintext}", "Idempotency-Key": "emb-1"},
                          timeout=60)
    first, second = embed(), embed()
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert UsageRecord.objects.count() == 1


def test_a_streamed_request_with_a_key_is_refused_naming_the_header(openai_client):
    with pytest.raises(openai.BadRequestError) as err:
        create(openai_client, "order-6", stream=True)
    assert err.value.body["param"] == "Idempotency-Key"
    assert UsageRecord.objects.count() == 0
