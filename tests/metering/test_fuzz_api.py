"""Fuzzing /api (the DRF usage and pool-statement API) from its own drf-spectacular schema with schemathesis:
no query string gets a 5xx, and answers conform to the schema, for a logged-in manager, for staff and for
nobody (who must get a 403, never data).

Bounded and reproducible (tests/fuzzing.py): the same requests every run, in seconds.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from django.conf import settings
from django.test import Client

from tests.fuzzing import fuzz_config, operations, run_fuzz

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES = 15
# Not response conformance for the error answers: drf-spectacular documents only the 200s.
CHECKS = ["not_a_server_error", "content_type_conformance", "response_schema_conformance"]


@pytest.fixture
def api_schema(live_gateway):
    # The schema the site serves, fetched the way a client would: this also proves the endpoint works.
    response = httpx.get(f"{live_gateway.url}/api/schema/", params={"format": "json"}, timeout=30)
    assert response.status_code == 200, response.text
    return schemathesis.openapi.from_dict(response.json(), config=fuzz_config(CHECKS))


def session_cookie(user) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


def test_no_api_query_is_a_5xx_for_a_manager_or_staff(api_schema, live_gateway, make_tenant, catalog,
                                                      clickhouse, django_user_model):
    tenant = make_tenant("acme")
    staff = django_user_model.objects.create_user("fuzz-staff", password="pw-for-tests", is_staff=True)
    seen = Counter()
    for user in (tenant.manager, staff):
        cookies = session_cookie(user)

        def call(case):
            response = case.call_and_validate(base_url=live_gateway.url, cookies=cookies)
            seen[case.path, response.status_code] += 1
            return response

        for operation in operations(api_schema):
            run_fuzz(api_schema, operation, call, max_examples=MAX_EXAMPLES)
    # The fuzz reached the queries, not only the validation.
    assert seen["/api/usage/", 200] and seen["/api/usage/events/", 200], seen


def test_without_a_session_the_api_refuses_every_query(api_schema, live_gateway, catalog):
    def call(case):
        response = case.call_and_validate(base_url=live_gateway.url)
        if case.path == "/api/schema/":
            assert response.status_code < 500
        elif response.status_code == 404:
            # An unknown ?format= is DRF's 404 before authentication: nothing about anyone's usage.
            assert response.json() == {"detail": "Not found."}
        else:
            assert response.status_code == 403, response.text
        return response

    for operation in operations(api_schema):
        run_fuzz(api_schema, operation, call, max_examples=5)
