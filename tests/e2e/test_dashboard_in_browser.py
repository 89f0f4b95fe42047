"""A manager logs in with a real browser (Debian's Chromium via Playwright) and sees the charts."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from dashboards.templatetags.money import usd

from budgets.models import Budget
from metering.models import UsageRecord
from metering.shipping import ship_pending_usage

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browse_dashboard(base_url: str, username: str, password: str, org_slug: str, screenshot: Path) -> dict:
    """Log in and read the dashboard as a person would. Runs in its own thread:
    Playwright's sync API runs an event loop, and Django refuses ORM calls from a
    thread that has one."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{base_url}/dashboards/")
            seen = {"login_url": page.url}
            page.fill("#id_username", username)
            page.fill("#id_password", password)
            page.click("button[type=submit]")
            page.wait_for_url(f"**/dashboards/{org_slug}/")
            # plotly.js came from our own static files and drew all three charts.
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3",
                                   timeout=20000)
            seen.update(
                plotly=page.evaluate("typeof Plotly"),
                requests=page.locator("[data-testid=total-requests]").inner_text(),
                spend=page.locator("[data-testid=total-spend]").inner_text(),
                feature_bars=page.locator("#spend-by-feature .bars path").count(),
                model_bars=page.locator("#spend-by-model .bars path").count(),
            )
            page.screenshot(path=str(screenshot), full_page=True)
            return seen
        finally:
            browser.close()


def test_manager_sees_charts_and_numbers_after_logging_in(live_gateway, openai_client, tenant, clickhouse, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (scripts/ensure-chromium.sh)")
    for i, feature in enumerate(["chat", "search"]):
        openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": f"q{i}"}],
                                              max_tokens=5, extra_headers={"X-Feature": feature})
    Budget.objects.create(organization=tenant.org, amount=Decimal("10.00"))
    ship_pending_usage()
    total = sum(r.cost_total for r in UsageRecord.objects.all())

    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(browse_dashboard, live_gateway.url, tenant.manager.username, "pw-for-tests",
                           tenant.org.slug, tmp_path / "dashboard.png").result(timeout=120)

    assert "/accounts/login/" in seen["login_url"]
    assert seen["plotly"] == "object"
    assert seen["requests"] == "2"
    assert seen["spend"] == usd(total)
    assert seen["feature_bars"] == 2  # chat and search
    assert seen["model_bars"] == 1
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
