"""`/api/usage/?format=csv` and `/api/usage/events/?format=csv` with no matching rows are a CSV of just the
header line, with its Content-Type: not an empty body without one (found by the /api fuzz)."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

RANGE = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}


@pytest.mark.parametrize("path, query, header", [
    ("/api/usage/events/", {}, "event_id,request_id,trace_id,timestamp,"),
    ("/api/usage/", {"group_by": "org,day"}, "org,day,requests,refused,errors,"),
])
def test_csv_with_no_rows_is_the_header_line_as_text_csv(client, make_tenant, catalog, clickhouse, path, query,
                                                         header):
    tenant = make_tenant("acme")
    client.force_login(tenant.manager)
    response = client.get(path, {**RANGE, **query, "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    body = response.content.decode()
    assert body.startswith(header) and body.endswith("\n") and body.count("\n") == 1, body
