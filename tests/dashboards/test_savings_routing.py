"""The savings page shows what `model: "auto"` decided: the share of routed requests per tier, per day and
in all, why, and what escalating them cost (equal to the ledger); named-model, refused and other orgs'
requests are not counted."""

import json
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


def figure(html: str, chart: str) -> dict:
    return json.loads(re.search(rf'<script id="{chart}-data" type="application/json">(.*?)</script>', html,
                                re.S).group(1))


def auto(org, at, model: str, tier: int, reason: str = "classifier", **fields):
    return record_attempt(org, at, model=model, model_requested="auto", route_tier=tier, route_model=model,
                          route_reason=reason, **fields)


def test_savings_page_shows_routed_share_per_tier_and_escalation_cost(client, make_tenant, catalog, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    yesterday, before = now - timedelta(days=1), now - timedelta(days=2)
    auto(acme.org, yesterday, "tollgate-mini", 1)
    auto(acme.org, yesterday, "tollgate-mini", 1)
    auto(acme.org, yesterday, "tollgate-small", 2, reason="low_confidence")
    # Escalated: the mini answer thrown away for small's; one request, routed to tier 1.
    auto(acme.org, before, "tollgate-mini", 1, request_id="escalated", discarded=True)
    auto(acme.org, before, "tollgate-small", 1, request_id="escalated",
         attempt_kind=UsageRecord.AttemptKind.ESCALATION)
    # Not routed by auto, not answered, or not acme's.
    record_attempt(acme.org, yesterday, model="tollgate-large", route_tier=3, route_model="tollgate-large",
                   route_reason="explicit")
    auto(acme.org, yesterday, "tollgate-large", 3, status=UsageRecord.Status.REFUSED, input_tokens=0, output_tokens=0)
    auto(globex.org, yesterday, "tollgate-large", 3)
    ship_pending_usage()
    client.force_login(acme.manager)

    html = client.get(f"/dashboards/{acme.org.slug}/savings/?days=7").content.decode()

    escalation = UsageRecord.objects.filter(organization=acme.org).aggregate(e=Sum("cost_escalation"))["e"]
    assert escalation > 0
    tier1 = re.search(r'<tr data-tier="1">(.*?)</tr>', html).group(1)
    tier2 = re.search(r'<tr data-tier="2">(.*?)</tr>', html).group(1)
    assert 'data-tier="3"' not in html
    assert re.findall(r'<td class="num">([^<]*)</td>', tier1)[:3] == ["3", "75.0%", "1"]
    assert re.findall(r'<td class="num">([^<]*)</td>', tier2)[:3] == ["1", "25.0%", "0"]
    assert Decimal(re.search(r'data-exact="([^"]+)"', tier1).group(1)) == escalation
    total = re.search(r'<tr data-testid="routing-total">(.*?)</tr>', html).group(1)
    assert Decimal(re.search(r'data-exact="([^"]+)"', total).group(1)) == escalation
    assert "classifier 3 · low_confidence 1" in html

    shares = {t["name"]: dict(zip(t["x"], t["y"])) for t in figure(html, "routed-by-tier")["data"]}
    day1, day2 = str(yesterday.date()), str(before.date())
    assert shares["Tier 1"][day1] == pytest.approx(2 / 3) and shares["Tier 2"][day1] == pytest.approx(1 / 3)
    assert shares["Tier 1"][day2] == 1.0 and shares["Tier 2"][day2] == 0.0
    [cost] = figure(html, "routed-escalation-cost")["data"]
    by_day = dict(zip(cost["x"], cost["y"]))
    assert by_day[day2] == pytest.approx(float(escalation)) and by_day[day1] == 0.0
