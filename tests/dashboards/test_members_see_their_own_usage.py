"""A member (not a manager) of an org sees their own usage only: on the dashboard, the request log, the
breakdowns and the CSV; never another user's (URL, filter, request, export), and no budgets or statement."""

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.shipping import ship_pending_usage
from tenants.models import Membership
from tests.metering.helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_member_sees_only_their_own_usage_everywhere(client, make_tenant, catalog, clickhouse,
                                                       django_user_model):
    acme = make_tenant("acme")
    dave = django_user_model.objects.create_user("dave")
    Membership.objects.create(user=dave, organization=acme.org, role=Membership.Role.MEMBER)
    now = timezone.now()
    mine = record_attempt(acme.org, now - timedelta(days=1), user_id=dave.pk)
    theirs = record_attempt(acme.org, now - timedelta(days=1), user_id=acme.manager.pk, output_tokens=300)
    record_attempt(acme.org, now - timedelta(days=2))
    ship_pending_usage()
    client.force_login(dave)
    base = f"/dashboards/{acme.org.slug}"

    assert client.get("/dashboards/")["Location"] == f"{base}/"
    html = client.get(f"{base}/").content.decode()
    assert Decimal(re.search(r'data-testid="total-spend"[^>]*data-exact="([^"]+)"', html).group(1)) == mine.cost_total
    assert 'data-testid="member-scope"' in html and 'data-testid="budgets"' not in html
    assert "statement-link" not in html

    log = client.get(f"{base}/requests/").content.decode()
    assert re.findall(r'<tr data-request="([^"]+)">', log) == [mine.request_id]
    assert client.get(f"{base}/requests/{mine.request_id}/").status_code == 200
    assert client.get(f"{base}/requests/{theirs.request_id}/").status_code == 404
    assert client.get(f"{base}/?user={acme.manager.pk}").status_code == 404
    assert client.get(f"{base}/by/feature/?user={acme.manager.pk}").status_code == 404
    assert client.get(f"{base}/statement/").status_code == 404
    assert client.get(f"{base}/budgets/").status_code == 404

    link = re.search(r'href="([^"]+)" data-testid="csv-download"', html).group(1).replace("&amp;", "&")
    rows = list(csv.DictReader(io.StringIO(client.get(link).content.decode())))
    assert sum(Decimal(r["cost_total"]) for r in rows) == mine.cost_total == ledger_total(user=dave)
    everyone = client.get(f"/api/usage/?org={acme.org.slug}&format=csv").content.decode()
    assert sum(Decimal(r["cost_total"]) for r in csv.DictReader(io.StringIO(everyone))) == mine.cost_total
    assert client.get(f"/api/usage/?org={acme.org.slug}&user={acme.manager.pk}").status_code == 404
