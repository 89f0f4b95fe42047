"""The staff capacity page: the latest stored plan's table and charts (replicas over time per scenario vs
demand, cost and SLO attainment), drawn by plotly.js in a real browser. Managers get a 403."""

from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from capacity.traces import write_trace
from capacity.synthetic import diurnal_trace
from tests.e2e.test_dashboard_in_browser import ALL_CHARTS_DRAWN, CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.django_db(transaction=True)


def make_plan(tmp_path: Path) -> None:
    trace = tmp_path / "day.jsonl"
    write_trace(diurnal_trace(days=1, seed=5, peak_rps=1, batch_requests_per_day=300), trace)
    call_command("plan_capacity", "--trace", str(trace), "--step", "60", stdout=StringIO(), stderr=StringIO())


def test_staff_see_the_latest_plan_and_managers_are_refused(client, make_tenant, django_user_model, tmp_path):
    acme = make_tenant("acme")
    client.force_login(acme.manager)
    assert client.get("/dashboards/staff/capacity/").status_code == 403
    client.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    empty = client.get("/dashboards/staff/capacity/").content.decode()
    assert 'data-testid="no-plan"' in empty and "plan_capacity" in empty
    make_plan(tmp_path)
    html = client.get("/dashboards/staff/capacity/").content.decode()
    for scenario in ("static", "autoscaled", "separated"):
        assert f'data-scenario="{scenario}"' in html
    for chart in ("capacity-replicas", "capacity-cost", "capacity-slo"):
        assert f'id="{chart}-data"' in html
    assert 'data-testid="staff-capacity-link"' in client.get("/dashboards/").content.decode()


def browse(base_url: str) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{base_url}/accounts/login/")
            page.fill("#id_username", "ops")
            page.fill("#id_password", "pw-for-tests")
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle")
            page.goto(f"{base_url}/dashboards/staff/capacity/")
            page.wait_for_function(ALL_CHARTS_DRAWN, timeout=60000)
            return {
                "charts": page.locator("[data-chart].js-plotly-plot").count(),
                # One line per scenario (and per pool of the separated one) over the demand areas.
                "replica_traces": page.evaluate(
                    "document.getElementById('capacity-replicas').data.filter(t => t.name.includes('replicas')).length"),
                "cost_bars": page.evaluate("document.getElementById('capacity-cost').data[0].x.length"),
                "rows": page.locator("[data-testid=scenarios] tr[data-scenario]").count(),
            }
        finally:
            browser.close()


def test_the_capacity_charts_draw_in_a_browser(live_gateway, django_user_model, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (scripts/ensure-chromium.sh)")
    django_user_model.objects.create_user("ops", password="pw-for-tests", is_staff=True)
    make_plan(tmp_path)
    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(browse, live_gateway.url).result(timeout=120)
    assert seen == {"charts": 3, "replica_traces": 3, "cost_bars": 3, "rows": 3}
