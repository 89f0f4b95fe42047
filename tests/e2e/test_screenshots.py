"""The README's screenshots, from a real browser on seeded usage: each main page draws its charts and its
1280×800 PNG stays small. With TOLLGATE_SCREENSHOTS_DIR set (scripts/screenshots.py sets docs/screenshots)
the PNGs are written there; otherwise to the test's own temporary folder."""

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from budgets.models import Budget
from metering.models import PoolRate
from metering.shipping import ship_pending_usage
from tests.e2e.showcase import seed_showcase
from tests.e2e.test_dashboard_in_browser import ALL_CHARTS_DRAWN, CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.django_db(transaction=True)

MAX_PNG_BYTES = 200_000
DESK = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def pages(org_slug: str) -> list[tuple[str, str, dict, bool, str, str]]:
    """(file name, path, viewport, draws charts, who looks, the element to shoot or "" for the viewport)."""
    return [
        ("org-overview.png", f"/dashboards/{org_slug}/?days=30", DESK, True, "manager", ""),
        ("org-overview-phone.png", f"/dashboards/{org_slug}/?days=30", PHONE, True, "manager", ""),
        ("feature-drill-down.png", f"/dashboards/{org_slug}/by/model/?days=30&feature=chat", DESK, False, "manager",
         ""),
        ("request-log.png", f"/dashboards/{org_slug}/requests/?days=30", DESK, False, "manager", ""),
        ("savings.png", f"/dashboards/{org_slug}/savings/?days=30", DESK, True, "manager", ""),
        ("routing.png", f"/dashboards/{org_slug}/savings/?days=30", DESK, True, "manager", "[data-testid=routing]"),
        ("statement.png", f"/dashboards/{org_slug}/statement/", DESK, False, "manager", ""),
        ("staff-gpu.png", "/dashboards/staff/gpu/?days=7", DESK, True, "staff", ""),
    ]


def take_screenshots(base_url: str, org_slug: str, logins: dict, out: Path) -> dict:
    from playwright.sync_api import sync_playwright

    sizes = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            contexts = {}
            for name, path, viewport, charts, who, element in pages(org_slug):
                key = (who, viewport["width"])
                if key not in contexts:
                    context = browser.new_context(viewport=viewport)
                    page = context.new_page()
                    page.set_default_timeout(90000)
                    page.goto(f"{base_url}/accounts/login/")
                    page.fill("#id_username", logins[who])
                    page.fill("#id_password", "pw-for-tests")
                    page.click("button[type=submit]")
                    page.wait_for_load_state("networkidle")
                    contexts[key] = page
                page = contexts[key]
                response = page.goto(f"{base_url}{path}")
                assert response.status == 200, path
                if charts:
                    page.wait_for_function(ALL_CHARTS_DRAWN, timeout=90000)
                page.wait_for_load_state("networkidle")
                # The viewport only (not the full page): what a person sees first, and a small file.
                shoot = page.locator(element) if element else page
                shoot.screenshot(path=str(out / name), animations="disabled")
                sizes[name] = (out / name).stat().st_size
        finally:
            browser.close()
    return sizes


def test_main_pages_screenshot_small_from_a_real_browser(live_gateway, make_tenant, catalog, clickhouse,
                                                        django_user_model, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (scripts/ensure-chromium.sh)")
    out = Path(os.environ.get("TOLLGATE_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    acme = make_tenant("acme", features=("chat", "search", "summarize"), tz="Europe/Berlin")
    now = timezone.now()
    PoolRate.objects.create(pool="interactive", effective_from=now - timedelta(days=60),
                            usd_per_gpu_hour=Decimal("2.50"), gpus=1)
    seed_showcase(acme.org, now, api_key_id=acme.key.pk, user_id=acme.manager.pk)
    Budget.objects.create(organization=acme.org, amount=Decimal("5.00"))
    Budget.objects.create(organization=acme.org, feature=acme.features["search"], amount=Decimal("1.00"))
    ship_pending_usage()
    django_user_model.objects.create_user("ops", password="pw-for-tests", is_staff=True)

    with ThreadPoolExecutor(max_workers=1) as pool:
        sizes = pool.submit(take_screenshots, live_gateway.url, acme.org.slug,
                            {"manager": acme.manager.username, "staff": "ops"}, out).result(timeout=300)

    assert sorted(sizes) == sorted(name for name, *_ in pages(acme.org.slug))
    for name, size in sizes.items():
        assert 10_000 < size <= MAX_PNG_BYTES, (name, size)
