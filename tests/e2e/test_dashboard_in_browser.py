"""A manager logs in with a real browser (Debian's Chromium via Playwright) and sees the charts."""

from decimal import Decimal
from pathlib import Path

import pytest

from budgets.models import Budget
from metering.models import UsageRecord
from metering.shipping import ship_pending_usage

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (scripts/ensure-chromium.sh)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_manager_sees_charts_and_numbers_after_logging_in(browser, live_gateway, openai_client, tenant, clickhouse,
                                                          tmp_path):
    for i in range(2):
        openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": f"q{i}"}],
                                              max_tokens=5, extra_headers={"X-Feature": ["chat", "search"][i]})
    Budget.objects.create(organization=tenant.org, amount=Decimal("10.00"))
    ship_pending_usage()
    total = sum(r.cost_total for r in UsageRecord.objects.all())

    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(f"{live_gateway.url}/dashboards/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", tenant.manager.username)
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(f"**/dashboards/{tenant.org.slug}/")

    # plotly.js came from our own static files and drew all three charts.
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
    assert page.evaluate("typeof Plotly") == "object"
    assert page.locator("[data-testid=total-requests]").inner_text() == "2"
    assert page.locator("[data-testid=total-spend]").inner_text() == f"${total:.4f}"
    bars = page.locator("#spend-by-feature .bars path").count()
    assert bars == 2  # chat and search
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
