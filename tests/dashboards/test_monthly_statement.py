"""The monthly chargeback statement: lines per feature × model in the org's month, totals equal to the
ledger and to the usage API to the nano-dollar; admins get every org's at once; other orgs are a 404."""

import csv
import io
import re
import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.shipping import ship_pending_usage
from tests.metering.helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def total(html: str, org: str) -> Decimal:
    section = re.search(rf'data-org="{org}">(.*?)</section>', html, re.S).group(1)
    return Decimal(re.search(r'data-testid="statement-total" data-exact="([^"]+)"', section).group(1))


def test_statement_is_the_orgs_month_and_equals_the_ledger_and_the_usage_api(client, make_tenant, catalog,
                                                                            clickhouse, django_user_model):
    acme = make_tenant("acme", tz="America/New_York")
    globex = make_tenant("globex", tz="Europe/Berlin")
    ny = zoneinfo.ZoneInfo("America/New_York")
    this_month = timezone.localtime(timezone.now(), ny).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    month = f"{last_month:%Y-%m}"
    inside = [record_attempt(acme.org, last_month + timedelta(minutes=10), feature="chat"),
              record_attempt(acme.org, last_month + timedelta(days=3), feature="search", model="tollgate-small"),
              record_attempt(acme.org, this_month - timedelta(minutes=10), feature="chat")]
    record_attempt(acme.org, last_month - timedelta(minutes=10))  # the month before, in New York
    record_attempt(acme.org, this_month + timedelta(minutes=10))  # the month after
    record_attempt(globex.org, last_month + timedelta(days=2))
    ship_pending_usage()
    client.force_login(acme.manager)

    response = client.get(f"/dashboards/{acme.org.slug}/statement/?month={month}")
    assert response.status_code == 200
    html = response.content.decode()
    expected = sum((r.cost_total for r in inside), Decimal(0))
    assert total(html, "acme") == expected == ledger_total(organization=acme.org, created_at__gte=last_month,
                                                            created_at__lt=this_month)
    assert len(re.findall(r"<tr data-line=", html)) == 2  # chat × mini, search × small
    assert "America/New_York" in html

    csv_url = re.search(r'href="([^"]+)" data-testid="statement-csv"', html).group(1).replace("&amp;", "&")
    download = client.get(csv_url)
    assert download["Content-Disposition"].startswith('attachment; filename="tollgate-usage-acme-')
    rows = list(csv.DictReader(io.StringIO(download.content.decode())))
    assert sum(Decimal(r["cost_total"]) for r in rows) == expected and len(rows) == 2

    assert client.get(f"/dashboards/{globex.org.slug}/statement/?month={month}").status_code == 404
    bad = client.get(f"/dashboards/{acme.org.slug}/statement/?month=2026-13")
    assert bad.status_code == 400 and "Give a month as YYYY-MM" in bad.content.decode()
    assert client.get("/dashboards/staff/statements/").status_code == 403

    client.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    everyone = client.get(f"/dashboards/staff/statements/?month={month}").content.decode()
    assert total(everyone, "acme") == expected
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    start = datetime(last_month.year, last_month.month, 1, tzinfo=berlin)
    end = datetime(this_month.year, this_month.month, 1, tzinfo=berlin)
    assert total(everyone, "globex") == ledger_total(organization=globex.org, created_at__gte=start,
                                                      created_at__lt=end) > 0
