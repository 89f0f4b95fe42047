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


# Every [data-chart] div has been turned into a plotly graph with its SVG drawn.
ALL_CHARTS_DRAWN = """() => {
    const charts = [...document.querySelectorAll('[data-chart]')];
    return charts.length > 0
        && charts.every(el => el.classList.contains('js-plotly-plot') && el.querySelector('.main-svg'));
}"""


def wait_for_charts(page) -> None:
    page.wait_for_function(ALL_CHARTS_DRAWN, timeout=20000)


def chart_counts(page) -> dict:
    return {"chart_divs": page.locator("[data-chart]").count(),
            "plotly_divs": page.locator("[data-chart].js-plotly-plot").count()}


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
            # plotly.js came from our own static files and drew every chart on the page.
            wait_for_charts(page)
            seen.update(
                plotly=page.evaluate("typeof Plotly"),
                requests=page.locator("[data-testid=total-requests]").inner_text(),
                spend=page.locator("[data-testid=total-spend]").inner_text(),
                feature_bars=page.locator("#spend-by-feature .bars path").count(),
                model_bars=page.locator("#spend-by-model .bars path").count(),
                **chart_counts(page),
                # Billed (base, escalation) and not billed (retry, cache and token savings) as two traces.
                component_points=page.evaluate(
                    "document.getElementById('cost-components').data.map(t => t.x.length)"),
                gpu_panels=page.evaluate("document.getElementById('gpu-by-pool').data.length"),
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
    # Spend per day, by feature, by model, cost components and GPU time per pool.
    assert seen["chart_divs"] == seen["plotly_divs"] == 5
    assert seen["component_points"] == [2, 3]
    assert seen["gpu_panels"] == 2  # engine-seconds and GPU cost
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def browse_staff_overview(base_url: str, username: str, password: str, screenshot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{base_url}/dashboards/")
            page.fill("#id_username", username)
            page.fill("#id_password", password)
            page.click("button[type=submit]")
            page.wait_for_url("**/dashboards/")
            page.click("[data-testid=staff-overview-link]")
            page.wait_for_url("**/dashboards/staff/overview/")
            wait_for_charts(page)
            seen = chart_counts(page)
            seen["org_rows"] = page.locator("[data-testid=by-org] tr[data-org]").count()
            page.screenshot(path=str(screenshot), full_page=True)
            return seen
        finally:
            browser.close()


def test_staff_follow_the_index_link_to_the_overview_charts(live_gateway, openai_client, tenant, clickhouse,
                                                             django_user_model, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (scripts/ensure-chromium.sh)")
    openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5)
    ship_pending_usage()
    django_user_model.objects.create_user("ops", password="pw-for-tests", is_staff=True)

    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(browse_staff_overview, live_gateway.url, "ops", "pw-for-tests",
                           tmp_path / "overview.png").result(timeout=120)

    # Spend by org and by model, cost components, GPU time per pool and utilization.
    assert seen["chart_divs"] == seen["plotly_divs"] == 5
    assert seen["org_rows"] == 1
