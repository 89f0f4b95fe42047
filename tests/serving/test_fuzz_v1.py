"""Fuzzing /v1 from its own OpenAPI description (schemathesis): no input gets a 5xx, every error is in
OpenAI's shape, and every answer conforms to the published schema, with a valid key and with none.

Bounded and reproducible (tests/fuzzing.py): the same requests every run, in seconds. Generation is
kept cheap (the CPU engine makes real tokens): chat requests get at most 2 output tokens, and most get a
model the gateway serves, so the fuzz reaches the engine and the ledger, not only "model not found".
"""

from __future__ import annotations

import json
import zlib

import pytest
import schemathesis

from serving.openapi import openapi_document
from tests.fuzzing import fuzz_config, operations, run_fuzz

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES = 25
SERVED = {"/v1/chat/completions": "tollgate-mini", "/v1/completions": "tollgate-mini",
          "/v1/embeddings": "all-minilm-l6-v2"}
# Schema conformance, status codes and content types against the document; no 5xx ever.
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "negative_data_rejection"]


# One schema for every test: the key and the server's address are given per call.
SCHEMA = schemathesis.openapi.from_dict(openapi_document(), config=fuzz_config(CHECKS))
OPERATIONS = operations(SCHEMA)


def keep_generation_cheap(case) -> None:
    """At most 2 output tokens per chat request, at most 4 inputs of 64 characters per valid embeddings
    request; two in three requests name a served model. Nothing here turns an invalid request valid."""
    timeout = (case.headers or {}).get("X-Tollgate-Timeout")
    if timeout is not None and 0 < _seconds(timeout) < 30:
        # A deadline the caller sets and the engine misses is a 504 by design: give it room, keep the parsing.
        case.headers["X-Tollgate-Timeout"] = "30"
    body = case.body
    if not isinstance(body, dict) or case.path not in SERVED:
        return
    valid = case.meta is None or case.meta.generation.mode.is_positive
    if valid and isinstance(body.get("input"), list):
        body["input"] = [text[:64] for text in body["input"][:4]]
    elif valid and isinstance(body.get("input"), str):
        body["input"] = body["input"][:64]
    model = body.get("model")
    if isinstance(model, str) and zlib.crc32(model.encode("utf-8", "surrogatepass")) % 3:
        body["model"] = SERVED[case.path]
    if case.path in ("/v1/chat/completions", "/v1/completions"):
        for name in ("max_tokens", "max_completion_tokens"):
            if type(body.get(name)) is int and body[name] > 2:
                body[name] = 2
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = 2


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")


def assert_openai_error_shape(response) -> None:
    if response.status_code < 400:
        return
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["type"], str)


@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_v1_input_is_a_5xx_and_every_answer_matches_the_published_schema(live_gateway, tenant, operation):
    def call(case):
        keep_generation_cheap(case)
        response = case.call_and_validate(base_url=live_gateway.url,
                                          headers={"Authorization": f"Bearer {tenant.plaintext}"})
        assert_openai_error_shape(response)
        return response

    statuses = run_fuzz(SCHEMA, operation, call, max_examples=MAX_EXAMPLES)
    if operation[1] in SERVED:
        # The fuzz got past the edge: some generated requests were served (generated, embedded, billed).
        assert statuses["positive", 200] > 0, statuses


# No key, a key never issued, and another scheme. One test (each test empties the database after it).
BAD_AUTHORIZATIONS = [None, "Bearer sk-never-issued", "Basic Zm9vOmJhcg=="]


def test_without_a_valid_key_every_v1_request_is_an_openai_shaped_401(live_gateway, catalog):
    for authorization in BAD_AUTHORIZATIONS:
        def call(case):
            keep_generation_cheap(case)
            response = case.call_and_validate(base_url=live_gateway.url,
                                              headers={"Authorization": authorization} if authorization else None)
            if case.path == "/v1/openapi.json":
                assert response.status_code == 200
                return response
            assert response.status_code == 401, response.text
            assert_openai_error_shape(response)
            assert json.loads(response.content)["error"]["code"] == "invalid_api_key"
            return response

        for operation in OPERATIONS:
            run_fuzz(SCHEMA, operation, call, max_examples=5)
