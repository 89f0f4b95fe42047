"""The published OpenAPI descriptions: /v1/openapi.json is valid OpenAPI 3.1, public, and says what the
gateway accepts (its examples are served; a field it does not define is refused by both). /api/schema/:
tests/metering/test_api_schema_is_valid_openapi.py."""

import httpx
import pytest
from openapi_spec_validator import validate

from serving.openapi import openapi_document

pytestmark = pytest.mark.django_db(transaction=True)


def fetch_v1_document(live_gateway) -> dict:
    response = httpx.get(f"{live_gateway.v1}/openapi.json", timeout=30)  # no key: it is public
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def example_of(document: dict, path: str) -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]


def test_v1_openapi_document_is_public_valid_openapi_and_names_our_endpoints(live_gateway, catalog):
    document = fetch_v1_document(live_gateway)
    validate(document)  # raises on anything that is not OpenAPI 3.1
    assert document["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}"} <= set(document["paths"])
    assert document == openapi_document()


def test_requests_built_from_the_documents_examples_are_served(live_gateway, tenant):
    document = fetch_v1_document(live_gateway)
    headers = {"Authorization": f"Bearer {tenant.plaintext}"}
    for path, wire in (("/v1/chat/completions", "ChatCompletionResponse"), ("/v1/embeddings", "EmbeddingResponse")):
        response = httpx.post(f"{live_gateway.url}{path}", json=example_of(document, path), headers=headers,
                              timeout=60)
        assert response.status_code == 200, response.text
        assert set(response.json()) <= set(document["components"]["schemas"][wire]["properties"])


def test_a_field_the_document_does_not_define_is_refused_by_the_gateway(live_gateway, tenant):
    document = fetch_v1_document(live_gateway)
    schema = document["components"]["schemas"]["ChatCompletionRequest"]
    assert schema["additionalProperties"] is False and "temprature" not in schema["properties"]
    body = {**example_of(document, "/v1/chat/completions"), "temprature": 0.5}
    response = httpx.post(f"{live_gateway.v1}/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {tenant.plaintext}"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temprature"


def test_the_openapi_document_takes_only_get(live_gateway, catalog):
    response = httpx.post(f"{live_gateway.v1}/openapi.json", timeout=30)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

