"""The semantic cache, over real HTTP: a paraphrase is answered from cache within one tenant and never
across tenants; a near-miss question (the opposite, or a sibling topic) is not; past its TTL or purged an
entry is never served; entries live in the database, so a restarted process (empty index) still finds them."""

import time

import openai
import pytest

from caching.models import CachePolicy, SemanticEntry
from caching.semantic import forget_indexes
from caching.services import purge
from metering.models import UsageRecord
from tenants.services import issue_api_key, revoke_api_key

pytestmark = pytest.mark.django_db(transaction=True)

CACHED = "How do I enable email notifications?"
PARAPHRASE = "How can I turn on email notifications?"


def ask(client, question, headers=None):
    return client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": question}], max_tokens=6, temperature=0,
        extra_headers=headers or {})


def client_for(live_gateway, plaintext):
    return openai.OpenAI(base_url=live_gateway.v1, api_key=plaintext, max_retries=0, timeout=60)


def test_a_paraphrase_is_answered_from_cache_within_the_tenant(openai_client):
    first = ask(openai_client, CACHED)
    paraphrase = ask(openai_client, PARAPHRASE)

    assert paraphrase.headers["x-tollgate-cache"] == "hit"
    assert paraphrase.headers["x-tollgate-cache-layer"] == "semantic"
    assert 0.7 < float(paraphrase.headers["x-tollgate-cache-similarity"]) < 1.0
    assert paraphrase.parse().choices[0].message.content == first.parse().choices[0].message.content
    hit = UsageRecord.objects.get(cache_hit=True)
    assert hit.attempt_kind == UsageRecord.AttemptKind.CACHE_HIT and hit.cost_total == 0 and hit.savings_cache > 0


def test_a_partitions_first_question_is_kept_unembedded_until_a_second_one_arrives(openai_client, tenant):
    from serving.engines.embeddings import get_embedder

    CachePolicy.objects.create(organization=tenant.org, exact_enabled=False)  # the semantic layer alone

    embedder = get_embedder()
    busy = embedder.busy_seconds  # grows with every forward pass
    assert ask(openai_client, CACHED).headers["x-tollgate-cache"] == "miss"
    other_context = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", max_tokens=6, temperature=0,
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": CACHED}])
    assert other_context.headers["x-tollgate-cache"] == "miss"  # a partition of its own, empty too
    assert embedder.busy_seconds == busy  # nothing to compare either question with: nothing embedded
    assert list(SemanticEntry.objects.values_list("vector", flat=True)) == [None, None]

    paraphrase = ask(openai_client, PARAPHRASE)
    assert paraphrase.headers["x-tollgate-cache"] == "hit"  # the kept question was embedded for it
    assert embedder.busy_seconds > busy
    embedded = SemanticEntry.objects.get(vector__isnull=False)  # written back: other processes reuse it
    assert embedded.question == CACHED and len(bytes(embedded.vector)) == 384 * 4
    assert SemanticEntry.objects.filter(vector__isnull=True).count() == 1  # the French partition's, still alone


def test_a_paraphrase_never_crosses_tenants(openai_client, live_gateway, make_tenant, tenant):
    ask(openai_client, CACHED)
    other = make_tenant("globex")
    assert ask(client_for(live_gateway, other.plaintext), PARAPHRASE).headers["x-tollgate-cache"] == "miss"
    other_scope = issue_api_key(tenant.org, "search key", default_feature=tenant.features["search"])
    assert ask(client_for(live_gateway, other_scope.plaintext), PARAPHRASE).headers["x-tollgate-cache"] == "miss"


@pytest.mark.parametrize("near_miss", ["How do I disable email notifications?",
                                       "How do I enable SMS notifications?",
                                       "How do I not get email notifications?"])
def test_a_near_miss_question_is_not_answered_from_cache(openai_client, near_miss):
    ask(openai_client, CACHED)
    assert ask(openai_client, near_miss).headers["x-tollgate-cache"] == "miss"
    assert not UsageRecord.objects.filter(cache_hit=True).exists()


def test_entries_survive_a_restart_of_the_index(openai_client):
    ask(openai_client, CACHED)
    forget_indexes()  # what a new web process starts with: rebuilt from the rows
    assert ask(openai_client, PARAPHRASE).headers["x-tollgate-cache"] == "hit"


def test_a_semantic_entry_past_its_ttl_is_never_served(openai_client, tenant):
    CachePolicy.objects.create(organization=tenant.org, ttl_s=1, exact_enabled=False)
    ask(openai_client, CACHED)
    assert ask(openai_client, PARAPHRASE).headers["x-tollgate-cache"] == "hit"
    time.sleep(1.1)
    assert ask(openai_client, PARAPHRASE).headers["x-tollgate-cache"] == "miss"


def test_purged_or_revoked_semantic_entries_are_never_served(openai_client, live_gateway, tenant):
    ask(openai_client, CACHED)
    purge(tenant.org.pk, "chat")
    assert not SemanticEntry.objects.exists()
    assert ask(openai_client, PARAPHRASE).headers["x-tollgate-cache"] == "miss"  # and this one is kept
    colleague = issue_api_key(tenant.org, "second chat key", default_feature=tenant.features["chat"])
    revoke_api_key(tenant.key)
    assert ask(client_for(live_gateway, colleague.plaintext), CACHED).headers["x-tollgate-cache"] == "miss"


def test_a_feature_policy_turns_the_semantic_layer_off(openai_client, tenant):
    CachePolicy.objects.create(organization=tenant.org, feature="chat", semantic_enabled=False)
    ask(openai_client, CACHED)
    assert ask(openai_client, PARAPHRASE).headers["x-tollgate-cache"] == "miss"
    assert not SemanticEntry.objects.exists()
