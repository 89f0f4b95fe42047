"""The embedding cache (per org scope, model and text, on both cache backends), and the purge endpoint
(managers of the org and staff only; it purges exactly what it names)."""

import openai
import pytest

from metering.models import UsageRecord

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("cache_backend")]

TEXTS = ["ledger rows", "budget holds"]


def embed(client, texts=TEXTS, headers=None):
    return client.embeddings.with_raw_response.create(model="all-minilm-l6-v2", input=texts,
                                                      extra_headers=headers or {})


def test_repeated_texts_are_embedded_once_and_the_hit_is_free(openai_client):
    first = embed(openai_client)
    again = embed(openai_client, list(reversed(TEXTS)))  # kept per text: another order hits too

    assert first.headers["x-tollgate-cache"] == "miss"
    assert again.headers["x-tollgate-cache"] == "hit"
    vectors = {d.index: d.embedding for d in first.parse().data}
    assert [d.embedding for d in again.parse().data] == [vectors[1], vectors[0]]
    assert again.parse().usage.prompt_tokens == first.parse().usage.prompt_tokens
    hit = UsageRecord.objects.get(cache_hit=True)
    assert hit.endpoint == "embeddings" and hit.cost_total == 0 and hit.engine_seconds == 0
    assert hit.savings_cache > 0


def test_embeddings_are_not_shared_between_orgs(openai_client, live_gateway, make_tenant):
    embed(openai_client)
    other = make_tenant("globex")
    theirs = openai.OpenAI(base_url=live_gateway.v1, api_key=other.plaintext, max_retries=0)
    assert embed(theirs).headers["x-tollgate-cache"] == "miss"


def test_no_store_embeddings_are_never_kept(openai_client):
    assert embed(openai_client, headers={"Cache-Control": "no-store"}).headers["x-tollgate-cache"] == "bypass"
    assert embed(openai_client).headers["x-tollgate-cache"] == "miss"


def test_the_purge_endpoint_purges_exactly_the_named_feature(openai_client, live_gateway, tenant, client):
    embed(openai_client)
    embed(openai_client, headers={"X-Feature": "search"})
    client.force_login(tenant.manager)

    response = client.post("/api/cache/purge/", {"org": tenant.org.slug, "feature": "chat"},
                           content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json()["feature"] == "chat"
    assert embed(openai_client).headers["x-tollgate-cache"] == "miss"
    assert embed(openai_client, headers={"X-Feature": "search"}).headers["x-tollgate-cache"] == "hit"


def test_only_the_orgs_managers_may_purge_it(tenant, make_tenant, client):
    other = make_tenant("globex")
    client.force_login(other.manager)
    assert client.post("/api/cache/purge/", {"org": tenant.org.slug},
                       content_type="application/json").status_code == 404
    client.logout()
    assert client.post("/api/cache/purge/", {"org": tenant.org.slug},
                       content_type="application/json").status_code == 403
