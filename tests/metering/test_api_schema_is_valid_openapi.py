"""/api/schema/ (drf-spectacular) serves valid OpenAPI for every /api route: clients and the fuzz tests
are generated from it."""

import pytest
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


def test_api_schema_is_public_valid_openapi_with_every_api_route(client):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    document = response.json()
    # group_by was documented with default "" and minLength 1 (a CharField without allow_blank): invalid.
    validate(document)
    assert {"/api/usage/", "/api/usage/events/", "/api/pools/{pool}/statement/"} <= set(document["paths"])
