"""The org page shows the period and filters the URL asks for (never silently 30 days), and its CSV
download comes from the usage API with a file name."""

import csv
import json
import io
import re
import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from metering.shipping import ship_pending_usage
from tenants.models import Membership
from tests.metering.helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def exact(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*data-exact="([^"]*)"', html)
    assert match, f"no {testid} on the page"
    return match.group(1)


def spend(html: str) -> Decimal:
    return Decimal(exact(html, "total-spend"))


def requests(html: str) -> int:
    return int(exact(html, "total-requests"))


@pytest.fixture
def acme(make_tenant, catalog, clickhouse):
    return make_tenant("acme", tz="America/New_York")


def test_days_n_shows_n_days_and_not_thirty(client, acme):
    now = timezone.now()
    recent = record_attempt(acme.org, now - timedelta(days=3))
    record_attempt(acme.org, now - timedelta(days=20), output_tokens=300)
    ship_pending_usage()
    client.force_login(acme.manager)

    html = client.get(f"/dashboards/{acme.org.slug}/?days=14").content.decode()
    assert requests(html) == 1 and spend(html) == recent.cost_total
    assert "last 14 days to now (days in America/New_York)" in html
    assert requests(client.get(f"/dashboards/{acme.org.slug}/?days=30").content.decode()) == 2
    assert requests(client.get(f"/dashboards/{acme.org.slug}/?days=2").content.decode()) == 0


@pytest.mark.parametrize("query, message", [
    ("days=0", "days: Ensure this value is greater than or equal to 1"),
    ("days=1000", "days: Ensure this value is less than or equal to 366"),
    ("days=fortnight", "days: Enter a whole number"),
    ("start=2026-11-01", "Give both start and end dates"),
    ("start=2026-11-05&end=2026-11-01", "The end date is before the start date"),
    ("start=2026-13-01&end=2026-12-01", "start: Enter a valid date"),
    ("key=abc", "key: Enter a whole number"),
])
def test_a_period_or_filter_that_cannot_be_read_is_an_error_on_the_page(client, acme, query, message):
    client.force_login(acme.manager)
    response = client.get(f"/dashboards/{acme.org.slug}/?{query}")
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-testid="query-errors"' in html and message in html
    assert 'data-testid="total-spend"' not in html  # no numbers for a period nobody asked for


def test_a_custom_range_is_whole_days_in_the_orgs_time_zone(client, acme):
    ny = zoneinfo.ZoneInfo("America/New_York")
    day = (timezone.now() - timedelta(days=10)).astimezone(ny).date()
    midnight = datetime.combine(day, datetime.min.time(), ny)
    inside_late = record_attempt(acme.org, midnight + timedelta(hours=23, minutes=30))
    inside_early = record_attempt(acme.org, midnight + timedelta(minutes=5))
    record_attempt(acme.org, datetime.combine(day + timedelta(days=1), datetime.min.time(), ny) + timedelta(minutes=30))
    record_attempt(acme.org, midnight - timedelta(minutes=30))
    ship_pending_usage()
    client.force_login(acme.manager)

    html = client.get(f"/dashboards/{acme.org.slug}/?start={day}&end={day}").content.decode()
    assert requests(html) == 2
    assert spend(html) == inside_late.cost_total + inside_early.cost_total
    assert f"{day:%b} {day.day}, {day.year} to {day:%b} {day.day}, {day.year} (whole days, America/New_York)" in html
    assert "Spend per day (America/New_York)" in html


def test_feature_model_key_and_user_filters_change_every_number(client, acme, make_tenant):
    User = get_user_model()
    carol = User.objects.create_user("carol")
    Membership.objects.create(user=carol, organization=acme.org)
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=1), feature="chat", api_key_id=acme.key.pk)
    record_attempt(acme.org, now - timedelta(days=1), feature="search", model="tollgate-small", user_id=carol.pk)
    record_attempt(acme.org, now - timedelta(days=2), feature="search", output_tokens=500)
    ship_pending_usage()
    client.force_login(acme.manager)
    base = f"/dashboards/{acme.org.slug}/"

    def shown(query: str) -> tuple[int, Decimal]:
        html = client.get(f"{base}?{query}").content.decode()
        return requests(html), spend(html)

    assert shown("") == (3, ledger_total(organization=acme.org))
    assert shown("feature=search") == (2, ledger_total(organization=acme.org, feature="search"))
    assert shown("model=tollgate-small") == (1, ledger_total(organization=acme.org, model_served="tollgate-small"))
    assert shown(f"key={acme.key.pk}") == (1, ledger_total(organization=acme.org, api_key=acme.key))
    assert shown(f"user={carol.pk}") == (1, ledger_total(organization=acme.org, user=carol))
    assert shown("feature=search&model=tollgate-mini") == (1, ledger_total(organization=acme.org, feature="search",
                                                                            model_served="tollgate-mini"))
    assert shown("feature=no-such-feature") == (0, Decimal(0))

    # Another org's key or user is not a way in.
    globex = make_tenant("globex")
    assert client.get(f"{base}?key={globex.key.pk}").status_code == 404
    assert client.get(f"{base}?user={globex.manager.pk}").status_code == 404


def test_the_csv_button_downloads_the_pages_numbers_with_a_file_name(client, acme):
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=1), feature="chat")
    record_attempt(acme.org, now - timedelta(days=2), feature="search", model="tollgate-small")
    ship_pending_usage()
    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/?days=7&feature=search").content.decode()
    link = re.search(r'href="([^"]+)" data-testid="csv-download"', html).group(1).replace("&amp;", "&")
    assert link.startswith("/api/usage/?") and "feature=search" in link and "format=csv" in link

    response = client.get(link)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    disposition = response["Content-Disposition"]
    assert re.fullmatch(r'attachment; filename="tollgate-usage-acme-\d{8}-\d{8}\.csv"', disposition), disposition
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {r["feature"] for r in rows} == {"search"}
    assert sum(Decimal(r["cost_total"]) for r in rows) == spend(html) == ledger_total(organization=acme.org,
                                                                                      feature="search")


def test_the_usage_api_names_its_csv_files(client, acme):
    client.force_login(acme.manager)
    response = client.get("/api/usage/events/?format=csv&start=2026-11-01T00:00:00Z&end=2026-12-01T00:00:00Z")
    expected = 'attachment; filename="tollgate-usage-events-my-orgs-20261101-20261201.csv"'
    assert response["Content-Disposition"] == expected


def test_top_keys_and_users_show_their_spend_and_drill_down_to_their_filter(client, acme):
    User = get_user_model()
    carol = User.objects.create_user("carol")
    Membership.objects.create(user=carol, organization=acme.org)
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=1), api_key_id=acme.key.pk, output_tokens=400)
    record_attempt(acme.org, now - timedelta(days=1), api_key_id=acme.key.pk, user_id=carol.pk)
    record_attempt(acme.org, now - timedelta(days=1))  # no key, no user: in the totals only
    ship_pending_usage()
    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/").content.decode()

    key_row = re.search(rf'<tr data-key="{acme.key.pk}">(.*?)</tr>', html).group(1)
    assert acme.key.name in key_row and f'data-exact="{ledger_total(api_key=acme.key)}"' in key_row
    user_row = re.search(rf'<tr data-user="{carol.pk}">(.*?)</tr>', html).group(1)
    assert "carol" in user_row and f'data-exact="{ledger_total(user=carol)}"' in user_row
    assert f"&amp;key={acme.key.pk}" in key_row and f"&amp;user={carol.pk}" in user_row
    assert len(re.findall(r"<tr data-key=", html)) == 1 and len(re.findall(r"<tr data-user=", html)) == 1


def test_spend_is_compared_with_the_previous_period_and_stacked_by_feature(client, acme):
    now = timezone.now()
    record_attempt(acme.org, now - timedelta(days=3), feature="chat")
    record_attempt(acme.org, now - timedelta(days=3), feature="search")
    before = record_attempt(acme.org, now - timedelta(days=10))  # in the 7 days before the last 7
    ship_pending_usage()
    client.force_login(acme.manager)
    html = client.get(f"/dashboards/{acme.org.slug}/?days=7").content.decode()
    assert Decimal(exact(html, "previous-period")) == before.cost_total
    change = (spend(html) - before.cost_total) / before.cost_total * 100
    assert f"+{change:.1f}% vs the previous period" in html
    figure = json.loads(re.search(r'<script id="spend-over-time-data" type="application/json">(.*?)</script>',
                                  html, re.S).group(1))
    assert {trace["name"] for trace in figure["data"]} == {"chat", "search"}
    assert figure["layout"]["barmode"] == "stack"
