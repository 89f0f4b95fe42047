"""/api/usage/ takes only the dates ClickHouse can hold; anything else is a JSON 400 naming the field."""

import pytest

from .test_usage_api import RANGE, two_orgs  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("path", ["/api/usage/", "/api/usage/events/"])
@pytest.mark.parametrize("field, value", [
    ("start", "0999-01-01T00:00:00Z"),
    ("start", "0001-01-01T00:00:00Z"),
    ("start", "1969-12-31T00:00:00Z"),
    ("end", "2200-01-01T00:00:00Z"),
    ("end", "9999-12-31T23:59:59Z"),
])
def test_a_date_clickhouse_cannot_hold_is_a_400_not_a_500(client, two_orgs, path, field, value):  # noqa: F811
    acme, _ = two_orgs
    client.force_login(acme.manager)
    response = client.get(path, {**RANGE, field: value})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert field in response.json()


def test_the_widest_range_clickhouse_holds_still_answers(client, two_orgs):  # noqa: F811
    acme, _ = two_orgs
    client.force_login(acme.manager)
    response = client.get("/api/usage/", {"start": "1970-01-01T00:00:00Z", "end": "2106-01-01T00:00:00Z"})
    assert response.status_code == 200
