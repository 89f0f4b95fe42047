"""The chargeback page shows ClickHouse's numbers, to the org's managers only."""

import re
from decimal import Decimal

import pytest

from dashboards.templatetags.money import usd

from budgets.models import Budget
from metering.models import UsageRecord
from metering.shipping import ship_pending_usage

pytestmark = pytest.mark.django_db(transaction=True)


def card(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*>([^<]*)<', html)
    assert match, f"no {testid} on the page"
    return match.group(1).strip()


def test_served_requests_show_in_the_dashboard_numbers(client, openai_client, tenant, clickhouse):
    for content in ("one", "two", "three"):
        openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": content}],
                                              max_tokens=6)
    Budget.objects.create(organization=tenant.org, amount=Decimal("25.00"))
    ship_pending_usage()
    records = UsageRecord.objects.filter(organization=tenant.org)
    total = sum(r.cost_total for r in records)

    client.force_login(tenant.manager)
    response = client.get(f"/dashboards/{tenant.org.slug}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert card(html, "total-requests") == "3"
    assert card(html, "input-tokens") == str(sum(r.input_tokens for r in records))
    assert card(html, "output-tokens") == str(sum(r.output_tokens for r in records))
    assert card(html, "total-spend") == usd(total)
    assert f'data-exact="{total}"' in html  # to the nano-dollar, straight from ClickHouse
    assert "tollgate-mini" in html and "acme" in html
    assert "$25.00" in html  # the budget row


def test_a_manager_cannot_see_another_orgs_dashboard(client, make_tenant, catalog):
    acme = make_tenant("acme")
    globex = make_tenant("globex")
    client.force_login(acme.manager)
    assert client.get(f"/dashboards/{globex.org.slug}/").status_code == 404
    assert client.get("/dashboards/no-such-org/").status_code == 404
    assert client.get(f"/dashboards/{acme.org.slug}/").status_code == 200


def test_anonymous_visitors_are_sent_to_log_in(client, tenant):
    response = client.get(f"/dashboards/{tenant.org.slug}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_manager_of_one_org_lands_on_its_dashboard(client, tenant):
    client.force_login(tenant.manager)
    response = client.get("/dashboards/")
    assert response.status_code == 302 and response["Location"] == f"/dashboards/{tenant.org.slug}/"
