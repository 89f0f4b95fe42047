"""Token counts have thousands separators, times say their time zone, and 404/403 pages lead back."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from budgets.models import Budget
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def card(html: str, testid: str) -> str:
    return re.search(rf'data-testid="{testid}"[^>]*>([^<]*)<', html).group(1).strip()


def test_token_counts_have_thousands_separators(client, make_tenant, catalog, clickhouse):
    acme = make_tenant("acme")
    record_attempt(acme.org, timezone.now() - timedelta(hours=3), input_tokens=170_816, output_tokens=1_234)
    ship_pending_usage()
    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/").content.decode()
    assert card(html, "input-tokens") == "170,816"
    assert card(html, "output-tokens") == "1,234"
    assert "170,816 / 1,234" in html  # the per-feature and per-model tables


def test_budget_reset_times_and_days_say_their_time_zone(client, make_tenant, catalog, clickhouse):
    acme = make_tenant("acme", tz="America/New_York")
    Budget.objects.create(organization=acme.org, amount=Decimal("50.00"))
    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/").content.decode()
    assert "Resets (America/New_York)" in html
    # A monthly budget resets at local midnight, shown with the zone's abbreviation (EST or EDT).
    assert re.fullmatch(r"\w{3} 1, \d{4} 00:00 E[SD]T", card(html, "budget-resets")), card(html, "budget-resets")
    assert "days in America/New_York" in html and "Spend per day (America/New_York)" in html


def test_not_found_and_forbidden_pages_use_the_site_layout_and_lead_back(client, make_tenant, catalog):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    client.force_login(acme.manager)
    for response in (client.get(f"/dashboards/{globex.org.slug}/"), client.get("/no/such/page/")):
        assert response.status_code == 404
        html = response.content.decode()
        assert 'data-testid="not-found"' in html and 'class="brand"' in html  # base.html's header
        assert 'href="/dashboards/"' in html and "Back to your dashboards" in html
        assert globex.org.name not in html
    response = client.get("/dashboards/staff/overview/")
    assert response.status_code == 403
    html = response.content.decode()
    assert 'data-testid="forbidden"' in html and "Back to your dashboards" in html and 'class="brand"' in html
