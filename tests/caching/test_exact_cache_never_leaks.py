"""The exact response cache, over real HTTP, on the local-memory and the Redis backend: a repeated
deterministic request is answered from cache as a free cache-hit row with its savings recorded, and an
entry is never shared across orgs or scopes, never served once its key is revoked or its TTL has passed,
purged exactly as named, and never kept under no-store."""

import time
from decimal import Decimal

import httpx
import openai
import pytest

from caching.models import CachePolicy
from caching.services import purge
from metering.models import UsageRecord
from tenants.services import issue_api_key, revoke_api_key

# The semantic layer is off here, so every hit and miss is the exact cache's (test_semantic_cache.py has its own).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("cache_backend")]


@pytest.fixture(autouse=True)
def exact_layer_only(settings):
    settings.TOLLGATE_SEMANTIC_CACHE = False

QUESTION = [{"role": "user", "content": "What does a ledger record?"}]


def ask(client, messages=QUESTION, headers=None, **overrides):
    request = {"model": "tollgate-mini", "messages": messages, "max_tokens": 6, "temperature": 0, **overrides}
    return client.chat.completions.with_raw_response.create(**request, extra_headers=headers or {})


def client_for(live_gateway, plaintext):
    return openai.OpenAI(base_url=live_gateway.v1, api_key=plaintext, max_retries=0, timeout=60)


def test_a_repeated_deterministic_request_is_a_free_cache_hit_with_its_savings(openai_client, tenant):
    first = ask(openai_client)
    second = ask(openai_client)

    assert first.headers["x-tollgate-cache"] == "miss"
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.headers["x-tollgate-cache-layer"] == "exact"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().id != first.parse().id  # a new response, not a replay of the first one's id
    assert second.headers["x-tollgate-cost"] == "0"
    generated, hit = UsageRecord.objects.order_by("created_at", "event_id")
    assert hit.attempt_kind == UsageRecord.AttemptKind.CACHE_HIT and hit.cache_hit
    assert (hit.cost_total, hit.engine_seconds, hit.input_tokens, hit.output_tokens) == (0, 0, 0, 0)
    assert hit.savings_cache == generated.cost_input + generated.cost_output > 0
    assert hit.model_served == "tollgate-mini"


def test_an_org_cache_price_is_billed_per_hit(openai_client, tenant):
    CachePolicy.objects.create(organization=tenant.org, hit_price=Decimal("0.0001"))
    ask(openai_client)
    hit = ask(openai_client)
    assert hit.headers["x-tollgate-cache"] == "hit"
    assert hit.headers["x-tollgate-cost"] == "0.0001"


def test_a_streamed_request_replays_a_hit_as_server_sent_events(openai_client):
    first = ask(openai_client).parse()
    stream = openai_client.chat.completions.create(model="tollgate-mini", messages=QUESTION, max_tokens=6,
                                                   temperature=0, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    assert stream.response.headers["x-tollgate-cache"] == "hit"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    assert UsageRecord.objects.filter(attempt_kind=UsageRecord.AttemptKind.CACHE_HIT, streamed=True).count() == 1


def test_a_request_that_is_not_deterministic_bypasses_the_cache(openai_client):
    ask(openai_client, temperature=0.7)
    again = ask(openai_client, temperature=0.7)
    assert again.headers["x-tollgate-cache"] == "bypass"
    seeded = ask(openai_client, temperature=0.7, seed=7), ask(openai_client, temperature=0.7, seed=7)
    assert [r.headers["x-tollgate-cache"] for r in seeded] == ["miss", "hit"]  # a fixed seed is deterministic


def test_the_same_prompt_from_two_orgs_never_shares_an_entry(openai_client, live_gateway, make_tenant):
    ask(openai_client)
    other = make_tenant("globex")
    theirs = ask(client_for(live_gateway, other.plaintext))
    assert theirs.headers["x-tollgate-cache"] == "miss"
    assert UsageRecord.objects.filter(organization=other.org, cache_hit=False).count() == 1


def test_two_keys_of_one_org_share_only_within_the_same_scope(openai_client, live_gateway, tenant):
    ask(openai_client)
    same_scope = issue_api_key(tenant.org, "second chat key", default_feature=tenant.features["chat"])
    other_scope = issue_api_key(tenant.org, "search key", default_feature=tenant.features["search"])
    assert ask(client_for(live_gateway, same_scope.plaintext)).headers["x-tollgate-cache"] == "hit"
    assert ask(client_for(live_gateway, other_scope.plaintext)).headers["x-tollgate-cache"] == "miss"
    # X-Feature is the same scope switch: the first key asking as "search" sees search's entries only.
    assert ask(openai_client, headers={"X-Feature": "search"}).headers["x-tollgate-cache"] == "hit"


def test_a_revoked_keys_entries_are_served_to_no_one(openai_client, live_gateway, tenant):
    ask(openai_client)
    colleague = issue_api_key(tenant.org, "second chat key", default_feature=tenant.features["chat"])
    revoke_api_key(tenant.key)
    again = ask(client_for(live_gateway, colleague.plaintext))
    assert again.headers["x-tollgate-cache"] == "miss"
    assert not UsageRecord.objects.filter(cache_hit=True).exists()


def test_purge_removes_everything_it_names_and_nothing_else(openai_client, live_gateway, make_tenant):
    other = make_tenant("globex")
    theirs = client_for(live_gateway, other.plaintext)
    for client, feature in ((openai_client, "chat"), (openai_client, "search"), (theirs, "chat")):
        ask(client, headers={"X-Feature": feature})
    tenant_org = UsageRecord.objects.exclude(organization=other.org).first().organization_id

    purge(tenant_org, "chat")
    assert ask(openai_client, headers={"X-Feature": "chat"}).headers["x-tollgate-cache"] == "miss"
    assert ask(openai_client, headers={"X-Feature": "search"}).headers["x-tollgate-cache"] == "hit"
    assert ask(theirs, headers={"X-Feature": "chat"}).headers["x-tollgate-cache"] == "hit"

    purge(tenant_org)
    assert ask(openai_client, headers={"X-Feature": "search"}).headers["x-tollgate-cache"] == "miss"
    assert ask(theirs, headers={"X-Feature": "chat"}).headers["x-tollgate-cache"] == "hit"


def test_an_entry_past_its_ttl_is_never_served(openai_client, tenant):
    CachePolicy.objects.create(organization=tenant.org, ttl_s=1)
    ask(openai_client)
    time.sleep(1.1)
    assert ask(openai_client).headers["x-tollgate-cache"] == "miss"


def test_max_age_serves_only_younger_entries(openai_client):
    ask(openai_client)
    time.sleep(1.1)
    assert ask(openai_client, headers={"Cache-Control": "max-age=1"}).headers["x-tollgate-cache"] == "miss"
    assert ask(openai_client, headers={"Cache-Control": "max-age=60"}).headers["x-tollgate-cache"] == "hit"


def test_no_store_is_never_stored_and_no_cache_is_never_served(openai_client):
    assert ask(openai_client, headers={"Cache-Control": "no-store"}).headers["x-tollgate-cache"] == "bypass"
    assert ask(openai_client).headers["x-tollgate-cache"] == "miss"  # nothing was kept
    assert ask(openai_client, headers={"Cache-Control": "no-cache"}).headers["x-tollgate-cache"] == "miss"
    assert ask(openai_client).headers["x-tollgate-cache"] == "hit"


def test_a_malformed_max_age_is_a_400_naming_the_header(live_gateway, tenant):
    response = httpx.post(f"{live_gateway.v1}/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {tenant.plaintext}", "Cache-Control": "max-age=soon"},
                          json={"model": "tollgate-mini", "messages": QUESTION, "temperature": 0})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Cache-Control"


def test_a_feature_policy_turns_the_cache_off_for_that_feature_only(openai_client, tenant):
    CachePolicy.objects.create(organization=tenant.org, feature="chat", exact_enabled=False, semantic_enabled=False)
    ask(openai_client)
    assert ask(openai_client).headers["x-tollgate-cache"] == "bypass"
    ask(openai_client, headers={"X-Feature": "search"})
    assert ask(openai_client, headers={"X-Feature": "search"}).headers["x-tollgate-cache"] == "hit"
