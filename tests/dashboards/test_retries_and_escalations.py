"""Retries and escalations: retry cost (not billed) and escalation cost (billed) per day and per model,
with their share of the bill, equal to the ledger."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from metering.models import UsageRecord
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def exact(html: str, testid: str) -> Decimal:
    return Decimal(re.search(rf'data-testid="{testid}" data-exact="([^"]+)"', html).group(1))


def test_retry_and_escalation_costs_equal_the_ledger_by_model_and_over_time(client, make_tenant, catalog,
                                                                            clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=2), status=UsageRecord.Status.ERROR)  # retry, mini
    record_attempt(acme.org, now - timedelta(days=2), model="tollgate-small", discarded=True)  # escalation
    record_attempt(acme.org, now - timedelta(days=2), model="tollgate-large")
    record_attempt(acme.org, now - timedelta(days=1))
    record_attempt(globex.org, now - timedelta(days=1), status=UsageRecord.Status.ERROR)
    ship_pending_usage()
    client.force_login(acme.manager)

    html = client.get(f"/dashboards/{acme.org.slug}/retries/").content.decode()
    ledger = UsageRecord.objects.filter(organization=acme.org).aggregate(
        retry=Sum("cost_retry"), escalation=Sum("cost_escalation"), billed=Sum("cost_total"))
    assert exact(html, "retry-total") == ledger["retry"] > 0
    assert exact(html, "escalation-total") == ledger["escalation"] > 0
    share = float(ledger["escalation"] / ledger["billed"]) * 100
    assert re.search(r'data-testid="escalation-share">([^<]+)<', html).group(1) == f"{share:.1f}%"
    small = re.search(r'<tr data-model="tollgate-small">(.*?)</tr>', html).group(1)
    assert f'data-exact="{ledger["escalation"]}"' in small
    mini = re.search(r'<tr data-model="tollgate-mini">(.*?)</tr>', html).group(1)
    assert f'data-exact="{ledger["retry"]}"' in mini
    assert 'data-testid="failed-attempts">1 of 4<' in html
    assert "Retry and escalation cost per day (UTC)" in html
    assert client.get(f"/dashboards/{globex.org.slug}/retries/").status_code == 404
