"""The cost panel's components add up to the bill: base + escalation (+ rows carrying only a total) == billed.

The demo history used to be written with cost_total alone, so acme's page read
"Base $0.02 + Escalation $0.00" next to "Billed $0.17".
"""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone

from metering.models import UsageRecord
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def exact(html: str, testid: str) -> Decimal | None:
    match = re.search(rf'data-testid="{testid}"[^>]*data-exact="([^"]*)"', html)
    return Decimal(match.group(1)) if match else None


def test_the_seeded_demo_history_splits_its_cost_so_base_plus_escalation_is_the_bill(client, clickhouse,
                                                                                   django_user_model):
    call_command("seed_demo", stdout=open("/dev/null", "w"))
    rows = UsageRecord.objects.filter(request_id__startswith="demo-")
    assert rows.exists()
    # Every demo row is an answered, kept attempt: all of its cost is base cost.
    assert not rows.exclude(cost_base=F("cost_total")).exists()
    ship_pending_usage()

    client.force_login(django_user_model.objects.get(username="admin"))
    for slug in ("acme", "globex"):
        html = client.get(f"/dashboards/{slug}/").content.decode()
        billed, base, escalation = (exact(html, f"component-{c}") for c in ("billed", "base", "escalation"))
        assert billed > 0
        assert base + escalation == billed, slug
        assert exact(html, "component-unsplit") is None  # nothing left over to explain


def test_rows_carrying_only_a_total_show_as_their_own_billed_component(client, make_tenant, catalog, clickhouse):
    acme = make_tenant("acme")
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=2), output_tokens=40)  # settled: split into base
    # Usage written before cost components existed (or imported): a total and nothing else.
    UsageRecord.objects.create(request_id="imported-1", created_at=now - timedelta(days=3), organization=acme.org,
                               feature="chat", model_requested="tollgate-mini", model_served="tollgate-mini",
                               input_tokens=1000, output_tokens=100, cost_total=Decimal("0.170000000"))
    ship_pending_usage()

    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/").content.decode()
    billed, base, escalation, unsplit = (exact(html, f"component-{c}")
                                         for c in ("billed", "base", "escalation", "unsplit"))
    assert unsplit == Decimal("0.170000000")
    assert base + escalation + unsplit == billed == exact(html, "total-spend")
    assert "Billed (base + escalation + not split)" in html
    # The chart draws the same billed parts.
    figure = re.search(r'<script id="cost-components-data" type="application/json">(.*?)</script>', html, re.S)
    assert "Not split" in figure.group(1)
