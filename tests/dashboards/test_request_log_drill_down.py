"""The request log: paged, newest first, with the dashboard's filters; each row opens one request with
its attempts, cost components, route and trace id; another org's request is a 404."""

import re
from datetime import timedelta

import pytest
import uuid6
from django.utils import timezone

from metering.models import UsageRecord
from metering.shipping import ship_pending_usage
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def test_request_log_pages_newest_first_and_opens_each_request(client, make_tenant, catalog, clickhouse):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    for i in range(55):
        record_attempt(acme.org, now - timedelta(hours=i + 1), feature="chat" if i % 5 else "search")
    # One request with a failed attempt (retry cost, not billed) and the answer.
    request_id = uuid6.uuid7().hex
    for attempt in (record_attempt(acme.org, now - timedelta(minutes=3), status=UsageRecord.Status.ERROR),
                    record_attempt(acme.org, now - timedelta(minutes=2))):
        UsageRecord.objects.filter(pk=attempt.pk).update(request_id=request_id, trace_id="ab" * 16)
    other = record_attempt(globex.org, now - timedelta(minutes=1))
    ship_pending_usage()
    client.force_login(acme.manager)

    first = client.get(f"/dashboards/{acme.org.slug}/requests/").content.decode()
    assert "57 attempts, newest first; page 1 of 2" in first
    ids = re.findall(r'<tr data-request="([^"]+)">', first)
    assert len(ids) == 50 and ids[0] == ids[1] == request_id  # the newest request's two attempts come first
    second = client.get(f"/dashboards/{acme.org.slug}/requests/?page=2").content.decode()
    assert len(re.findall(r'<tr data-request="', second)) == 7
    assert client.get(f"/dashboards/{acme.org.slug}/requests/?page=3").status_code == 404
    assert client.get(f"/dashboards/{acme.org.slug}/requests/?page=zero").status_code == 400
    search = client.get(f"/dashboards/{acme.org.slug}/requests/?feature=search").content.decode()
    assert "11 attempts" in search

    detail = client.get(f"/dashboards/{acme.org.slug}/requests/{request_id}/").content.decode()
    assert 'data-testid="request-attempts">2<' in detail
    assert "ab" * 16 in detail  # the trace id
    answered = UsageRecord.objects.get(request_id=request_id, status=UsageRecord.Status.OK)
    assert f'data-testid="request-billed" data-exact="{answered.cost_total}"' in detail
    assert "Retry (not billed)" in detail and "error" in detail

    assert client.get(f"/dashboards/{acme.org.slug}/requests/{other.request_id}/").status_code == 404
    assert client.get(f"/dashboards/{globex.org.slug}/requests/").status_code == 404
