"""No chart offers to send tenant data off-site: every figure carries our plotly config, and the
pages run no inline script (the Content-Security-Policy forbids it)."""

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def figures(html: str) -> dict:
    return {m.group(1): json.loads(m.group(2)) for m in
            re.finditer(r'<script id="([\w-]+)-data" type="application/json">(.*?)</script>', html, re.S)}


def test_every_chart_is_configured_without_share_or_edit_online_buttons(client, tenant, clickhouse,
                                                                         django_user_model):
    record_attempt(tenant.org, timezone.now() - timedelta(hours=2))
    ship_pending_usage()
    client.force_login(tenant.manager)
    staff = django_user_model.objects.create_user("ops", is_staff=True)
    pages = [client.get(f"/dashboards/{tenant.org.slug}/").content.decode()]
    client.force_login(staff)
    pages.append(client.get("/dashboards/staff/overview/").content.decode())

    for html in pages:
        charts = figures(html)
        assert len(charts) == 5
        for name, figure in charts.items():
            config = figure["config"]
            assert config["showSendToCloud"] is False, name
            assert config["showEditInChartStudio"] is False, name
            assert config["displaylogo"] is False and config["showLink"] is False, name
            assert {"sendDataToCloud", "editInChartStudio"} <= set(config["modeBarButtonsToRemove"])
        # Scripts are files from this site; the only inline <script> blocks are JSON data.
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert 'type="application/json"' in tag or re.search(r'src="/static/', tag), tag
        assert "cdn.plot.ly" not in html and "chart-studio" not in html.lower()


def test_pages_send_a_strict_content_security_policy(client, tenant):
    client.force_login(tenant.manager)
    response = client.get(f"/dashboards/{tenant.org.slug}/")
    policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'self'"
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert policy["script-src"].startswith("'self'")
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'"
    # The admin and the login page carry it too.
    assert "frame-ancestors 'none'" in client.get("/admin/login/")["Content-Security-Policy"]
