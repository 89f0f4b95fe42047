"""Features, models, keys and users: cost, tokens, cost per request, latency and TTFT percentiles and error
rate per row, drill-down from a feature to its models and keys and back, and nothing of another org."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import UsageRecord
from metering.shipping import ship_pending_usage
from tests.metering.helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def rows(html: str) -> dict:
    return {m.group(1): m.group(2) for m in re.finditer(r'<tr data-row="([^"]+)">(.*?)</tr>', html, re.S)}


def test_breakdown_by_feature_drills_down_to_its_models_and_keys_and_back(client, make_tenant, catalog,
                                                                          clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=1), feature="chat", api_key_id=acme.key.pk)
    record_attempt(acme.org, now - timedelta(days=1), feature="chat", model="tollgate-small")
    record_attempt(acme.org, now - timedelta(days=1), feature="chat", status=UsageRecord.Status.ERROR)
    record_attempt(acme.org, now - timedelta(days=1), feature="search")
    record_attempt(globex.org, now - timedelta(days=1), feature="chat")
    ship_pending_usage()
    client.force_login(acme.manager)
    base = f"/dashboards/{acme.org.slug}/by"

    features = client.get(f"{base}/feature/").content.decode()
    shown = rows(features)
    assert set(shown) == {"chat", "search"}
    chat = shown["chat"]
    assert f'data-exact="{ledger_total(organization=acme.org, feature="chat")}"' in chat
    assert re.search(r'data-testid="error-rate">33.3%<', chat)  # one failed of three
    assert "<td class=\"num\">3</td>" in chat

    drill = re.search(r'<tr data-row="chat">.*?href="([^"]+)" data-testid="drill-down"', features, re.S).group(1)
    models = client.get(drill.replace("&amp;", "&")).content.decode()
    assert drill.startswith(f"/dashboards/{acme.org.slug}/by/model/?") and "feature=chat" in drill
    assert set(rows(models)) == {"tollgate-mini", "tollgate-small"}
    assert 'data-testid="drill-up"' in models  # back to all models (feature filter cleared)
    keys = client.get(f"{base}/key/?feature=chat").content.decode()
    assert set(rows(keys)) == {str(acme.key.pk)} and acme.key.name in keys

    assert client.get(f"{base}/pool/").status_code == 404
    assert client.get(f"/dashboards/{globex.org.slug}/by/feature/").status_code == 404
    assert client.get(f"{base}/feature/?days=abc").status_code == 400
    assert sum(Decimal(v) for v in re.findall(r'data-exact="([^"]+)"', features)) == ledger_total(
        organization=acme.org)
