"""Savings: what the cache and token optimization saved (not billed), per feature and per day, and the
cache-hit rate, equal to the ledger."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
import uuid6
from django.db.models import Sum
from django.utils import timezone

from metering import pricing
from metering.models import UsageRecord
from metering.services import UsageDraft, record_usage
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def test_savings_and_hit_rate_equal_the_ledger(client, make_tenant, catalog, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=1), feature="chat")
    record_attempt(acme.org, now - timedelta(days=2), feature="search")
    record_usage(UsageDraft(request_id=uuid6.uuid7().hex, org_id=acme.org.pk, created_at=now - timedelta(days=1),
                            model_requested="tollgate-mini", model_served="tollgate-mini", feature="chat",
                            attempt_kind=UsageRecord.AttemptKind.CACHE_HIT, cache_hit=True,
                            savings_cache=Decimal("0.000321000")))
    entry = pricing.catalog_entry("tollgate-small", now)
    record_usage(UsageDraft(request_id="saved", org_id=acme.org.pk, created_at=now - timedelta(days=2),
                            model_requested="tollgate-small", model_served="tollgate-small", feature="search",
                            input_tokens=100, tokens_saved=12_345, price_id=entry.price_id))
    record_usage(UsageDraft(request_id=uuid6.uuid7().hex, org_id=globex.org.pk, created_at=now - timedelta(days=1),
                            model_requested="tollgate-mini", model_served="tollgate-mini", feature="chat",
                            attempt_kind=UsageRecord.AttemptKind.CACHE_HIT, cache_hit=True,
                            savings_cache=Decimal("0.5")))
    ship_pending_usage()
    client.force_login(acme.manager)

    html = client.get(f"/dashboards/{acme.org.slug}/savings/").content.decode()
    ledger = UsageRecord.objects.filter(organization=acme.org).aggregate(cache=Sum("savings_cache"),
                                                                          tokens=Sum("savings_tokens"))
    assert re.search(r'data-testid="savings-cache" data-exact="([^"]+)"', html).group(1) == str(ledger["cache"])
    tokens = re.search(r'data-testid="savings-tokens" data-exact="([^"]+)"', html).group(1)
    assert Decimal(tokens) == ledger["tokens"] > 0
    assert re.search(r'data-testid="tokens-saved">([^<]+)<', html).group(1) == "12,345"
    assert re.search(r'data-testid="cache-hit-rate"[^>]*>([^<]+)<', html).group(1) == "25.0%"  # 1 of 4 answered
    chat = re.search(r'<tr data-feature="chat">(.*?)</tr>', html).group(1)
    assert 'data-exact="0.000321000"' in chat and "50.0%" in chat
    assert "Saved per day, not billed (UTC)" in html
    assert client.get(f"/dashboards/{globex.org.slug}/savings/").status_code == 404
