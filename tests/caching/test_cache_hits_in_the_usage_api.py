"""The usage API shows cache hits: hit rate and savings by org, feature, model and cache layer, from the
ledger rows real requests left (shipped to ClickHouse)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import UsageRecord
from metering.shipping import ship_pending_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("cache_backend")]


def test_hit_rate_and_savings_by_layer(openai_client, tenant, client, clickhouse):
    question = [{"role": "user", "content": "How do I enable email notifications?"}]
    paraphrase = [{"role": "user", "content": "How can I turn on email notifications?"}]
    for messages in (question, question, paraphrase):
        openai_client.chat.completions.create(model="tollgate-mini", messages=messages, max_tokens=6, temperature=0)
    openai_client.embeddings.create(model="all-minilm-l6-v2", input=["ledger"])
    openai_client.embeddings.create(model="all-minilm-l6-v2", input=["ledger"])
    assert sorted(UsageRecord.objects.values_list("cache_layer", flat=True)) == ["", "", "embedding", "exact",
                                                                                  "semantic"]
    ship_pending_usage()

    client.force_login(tenant.manager)
    now = timezone.now()
    span = {"start": (now - timedelta(hours=1)).isoformat(), "end": (now + timedelta(hours=1)).isoformat()}
    rows = client.get("/api/usage/", {**span, "group_by": "model,cache_layer"}).json()["results"]
    by_layer = {(row["model"], row["cache_layer"]): row for row in rows}
    assert set(by_layer) == {("tollgate-mini", ""), ("tollgate-mini", "exact"), ("tollgate-mini", "semantic"),
                             ("all-minilm-l6-v2", ""), ("all-minilm-l6-v2", "embedding")}
    exact = by_layer[("tollgate-mini", "exact")]
    assert exact["cache_hits"] == 1 and exact["cache_hit_rate"] == 1.0 and Decimal(exact["cost_total"]) == 0
    assert Decimal(exact["savings_cache"]) == UsageRecord.objects.get(cache_layer="exact").savings_cache > 0

    totals = client.get("/api/usage/", {**span, "group_by": "feature"}).json()["results"][0]
    assert totals["cache_hits"] == 3 and totals["cache_hit_rate"] == pytest.approx(3 / 5)
