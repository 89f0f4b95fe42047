"""Budgets page: each budget's spend against its amount over the period (chart), thresholds, forecast,
and the alert history with acknowledge; other orgs are a 404."""

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from budgets.models import Budget
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def test_budgets_page_draws_spend_against_each_budget_with_its_thresholds(client, make_tenant, catalog,
                                                                          clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    whole = Budget.objects.create(organization=acme.org, amount=Decimal("50.00"), thresholds="50,80,100")
    search = Budget.objects.create(organization=acme.org, feature=acme.features["search"], amount=Decimal("5.00"),
                                   thresholds="90")
    now = timezone.now()
    chat = record_attempt(acme.org, now - timedelta(minutes=30), feature="chat")
    found = record_attempt(acme.org, now - timedelta(minutes=20), feature="search", output_tokens=300)
    ship_pending_usage()
    client.force_login(acme.manager)

    html = client.get(f"/dashboards/{acme.org.slug}/budgets/").content.decode()
    figures = {m.group(1): json.loads(m.group(2)) for m in
               re.finditer(r'<script id="(budget-\d+)-data" type="application/json">(.*?)</script>', html, re.S)}
    assert set(figures) == {f"budget-{whole.pk}", f"budget-{search.pk}"}
    spent = {name: fig["data"][0]["y"][-1] for name, fig in figures.items()}
    assert spent[f"budget-{whole.pk}"] == pytest.approx(float(chat.cost_total + found.cost_total))
    assert spent[f"budget-{search.pk}"] == pytest.approx(float(found.cost_total))  # the feature's usage only
    assert figures[f"budget-{search.pk}"]["data"][1]["y"] == [5.0, 5.0]  # the amount line
    panel = re.search(rf'data-budget-panel="{whole.pk}">.*?<p class="muted"[^>]*>(.*?)</p>', html, re.S).group(1)
    assert re.findall(r'data-testid="threshold">(\d+)%', panel) == ["50", "80", "100"]
    assert client.get(f"/dashboards/{globex.org.slug}/budgets/").status_code == 404
