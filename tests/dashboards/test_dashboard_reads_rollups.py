"""Dashboards read the hourly rollup (whole hours) and only the edges of the range from the raw table."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from dashboards.templatetags.money import usd
from metering.shipping import ship_pending_usage
from tests.metering.helpers import ledger_total, record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def test_dashboard_totals_come_from_the_hourly_rollup(client, tenant, clickhouse):
    two_days_ago = timezone.now() - timedelta(days=2)
    for i in range(4):
        record_attempt(tenant.org, two_days_ago + timedelta(minutes=i), output_tokens=5 + i)
    ship_pending_usage()
    # Drop the raw rows: if the page still shows the spend, it was read from usage_hourly.
    clickhouse.command("TRUNCATE TABLE usage_events")

    client.force_login(tenant.manager)
    html = client.get(f"/dashboards/{tenant.org.slug}/").content.decode()
    spend = re.search(r'data-testid="total-spend"[^>]*>([^<]*)<', html).group(1).strip()
    assert spend == usd(ledger_total())
    assert re.search(r'data-testid="total-requests"[^>]*>\s*4\s*<', html)
