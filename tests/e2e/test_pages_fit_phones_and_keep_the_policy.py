"""In a real browser: the org page fits a 390-pixel phone (wide tables scroll in their own box), charts
keep a PNG download and offer no cloud upload, no request leaves the host, and neither the dashboards
nor the admin break the Content-Security-Policy (no violation, no console error); admin lists fit 1366 px."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from budgets.models import Budget
from metering.models import PoolRate
from metering.shipping import ship_pending_usage
from tests.e2e.test_dashboard_in_browser import ALL_CHARTS_DRAWN, CHROMIUM, CHROMIUM_ARGS
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)

WATCH_POLICY = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
    e => window.__violations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));
"""

MODEBAR_TITLES = "() => [...document.querySelectorAll('.modebar-btn')].map(b => b.getAttribute('data-title'))"
OVERFLOW = "() => document.documentElement.scrollWidth"
# The widest table's box: how wide its content is, and how wide the box is.
BUDGET_BOX = """() => { const t = document.querySelector('[data-testid=budgets]');
    const box = t.closest('.scroll'); return [t.scrollWidth, box.clientWidth, getComputedStyle(box).overflowX]; }"""


class Visit:
    """One browser context: every request's host, console errors and policy violations, per page."""

    def __init__(self, browser, base_url: str, viewport: dict):
        self.context = browser.new_context(viewport=viewport)
        self.context.add_init_script(WATCH_POLICY)
        self.page = self.context.new_page()
        self.page.set_default_timeout(90000)  # a loaded 2-core machine can take long to draw the charts
        self.hosts: set[str] = set()
        self.console_errors: list[str] = []
        self.page.on("request", lambda r: self.hosts.add(urlsplit(r.url).netloc))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("response", lambda r: r.status >= 400 and self.console_errors.append(f"{r.status} {r.url}"))
        self.base_url = base_url

    def log_in(self, username: str, password: str) -> None:
        self.page.goto(f"{self.base_url}/accounts/login/")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", password)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("networkidle")

    def open(self, path: str, charts: bool = False) -> dict:
        response = self.page.goto(f"{self.base_url}{path}")
        if charts:
            self.page.wait_for_function(ALL_CHARTS_DRAWN, timeout=90000)
        self.page.wait_for_load_state("networkidle")
        return {"status": response.status, "width": self.page.evaluate(OVERFLOW),
                "violations": self.page.evaluate("window.__violations")}


def org_pages(org_slug: str) -> list[str]:
    """The org's other pages (charts=True for the ones that draw)."""
    return [f"/dashboards/{org_slug}/statement/", f"/dashboards/{org_slug}/requests/",
            f"/dashboards/{org_slug}/by/feature/", f"/dashboards/{org_slug}/by/key/?feature=chat"]


def browse(base_url: str, org_slug: str, manager: str, staff: str, admin_paths: list[str], shots: Path) -> dict:
    from playwright.sync_api import sync_playwright

    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            phone = Visit(browser, base_url, {"width": 390, "height": 844})
            phone.log_in(manager, "pw-for-tests")
            seen["phone_org"] = phone.open(f"/dashboards/{org_slug}/", charts=True)
            seen["phone_budget_box"] = phone.page.evaluate(BUDGET_BOX)
            seen["modebar"] = phone.page.evaluate(MODEBAR_TITLES)
            phone.page.screenshot(path=str(shots / "org-dashboard-phone.png"), full_page=True)
            seen["phone_filtered"] = phone.open(f"/dashboards/{org_slug}/?days=7&feature=chat", charts=True)
            seen["phone_retries"] = phone.open(f"/dashboards/{org_slug}/retries/", charts=True)
            seen["phone_savings"] = phone.open(f"/dashboards/{org_slug}/savings/", charts=True)
            seen["phone_budgets"] = phone.open(f"/dashboards/{org_slug}/budgets/", charts=True)
            for path in org_pages(org_slug):
                seen[f"phone {path}"] = phone.open(path)
            seen["phone_hosts"], seen["phone_console"] = phone.hosts, phone.console_errors

            desk = Visit(browser, base_url, {"width": 1366, "height": 900})
            desk.log_in(staff, "pw-for-tests")
            seen["desk_org"] = desk.open(f"/dashboards/{org_slug}/", charts=True)
            desk.page.screenshot(path=str(shots / "org-dashboard.png"), full_page=True)
            seen["desk_overview"] = desk.open("/dashboards/staff/overview/", charts=True)
            desk.page.screenshot(path=str(shots / "staff-overview.png"), full_page=True)
            staff_pages = ["/dashboards/staff/statements/", "/dashboards/staff/gpu/"]
            for path in admin_paths + org_pages(org_slug) + staff_pages:
                seen[path] = desk.open(path)
            desk.page.goto(f"{base_url}/admin/serving/pool/")
            desk.page.screenshot(path=str(shots / "admin-pools.png"), full_page=True)
            seen["desk_hosts"], seen["desk_console"] = desk.hosts, desk.console_errors
        finally:
            browser.close()
    return seen


def test_pages_fit_a_phone_offer_no_cloud_upload_and_keep_the_policy(live_gateway, make_tenant, catalog,
                                                                     clickhouse, django_user_model, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (scripts/ensure-chromium.sh)")
    acme = make_tenant("acme", tz="America/New_York")
    now = timezone.now()
    for days, feature, model in ((1, "chat", "tollgate-mini"), (2, "search", "tollgate-small"),
                                 (12, "chat", "tollgate-large")):
        record_attempt(acme.org, now - timedelta(days=days), feature=feature, model=model, input_tokens=170_816,
                       pool="interactive", engine_seconds=0.5)
    budget = Budget.objects.create(organization=acme.org, amount=Decimal("50.00"))
    Budget.objects.create(organization=acme.org, feature=acme.features["search"], amount=Decimal("5.00"))
    PoolRate.objects.create(pool="interactive", effective_from=now - timedelta(days=30),
                            usd_per_gpu_hour=Decimal("2.50"), gpus=2)
    ship_pending_usage()
    django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests")
    admin_paths = ["/admin/", "/admin/budgets/budget/", f"/admin/budgets/budget/{budget.pk}/change/",
                   "/admin/budgets/budget/add/", "/admin/serving/pool/", "/admin/metering/usagerecord/",
                   f"/admin/tenants/organization/{acme.org.pk}/change/", "/admin/metering/poolrate/"]

    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(browse, live_gateway.url, acme.org.slug, acme.manager.username, "ops",
                           admin_paths, tmp_path).result(timeout=300)

    host = urlsplit(live_gateway.url).netloc
    phone_pages = ["phone_org", "phone_filtered", "phone_retries", "phone_savings", "phone_budgets",
                   *(f"phone {p}" for p in org_pages(acme.org.slug))]
    desk_pages = ["desk_org", "desk_overview", *admin_paths, *org_pages(acme.org.slug), "/dashboards/staff/statements/",
                  "/dashboards/staff/gpu/"]
    for name in phone_pages + desk_pages:
        assert seen[name]["status"] == 200, name
        assert seen[name]["violations"] == [], name
    for name in phone_pages:
        assert seen[name]["width"] <= 390, name
    table_width, box_width, overflow = seen["phone_budget_box"]
    assert box_width <= 390 and overflow == "auto" and table_width > box_width  # it scrolls in its box
    for path in desk_pages:
        assert seen[path]["width"] <= 1366, path
    # Plotly's PNG download is kept; nothing offers to upload the chart.
    assert "Download plot as a PNG" in seen["modebar"]
    assert not [t for t in seen["modebar"] if t and ("Cloud" in t or "Chart Studio" in t or "plotly" in t.lower())]
    assert seen["phone_hosts"] == {host} and seen["desk_hosts"] == {host}
    assert seen["phone_console"] == [] and seen["desk_console"] == []
