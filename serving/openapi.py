"""The OpenAPI 3.1 description of /v1, served at ``GET /v1/openapi.json``.

The schemas are generated from the wire types in ``protocol.py`` and ``errors.py`` (pydantic's JSON
Schema, which OpenAPI 3.1 takes as it is), so the document cannot drift from what the edge accepts:
a body the schema allows is one pydantic parses, and a field the gateway does not know is refused by
both (``additionalProperties: false``). The paths, parameters and responses are written here, after
OpenAI's published API for the endpoints the gateway implements (the Batch API's files and batches
are described by OpenAI's own document; they are not fuzzed here).

Some rules the schema cannot state are checked by the flow, and answered with a 400 or 404 in
OpenAI's error shape: the model must be one this gateway serves; parameters OpenAI defines that the
serving engine does not honour are refused by name; ``stream_options`` needs ``stream: true``; the
prompt must fit the model's context window.
"""

from __future__ import annotations

import functools
import json

from pydantic.json_schema import models_json_schema

from .errors import ErrorResponse
from .protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    TextCompletionRequest,
)

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

CHAT_EXAMPLE = {"model": "tollgate-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
COMPLETIONS_EXAMPLE = {"model": "tollgate-mini", "prompt": "Say hello.", "max_tokens": 8}
EMBEDDINGS_EXAMPLE = {"model": "all-minilm-l6-v2", "input": "The quick brown fox"}

# Refusals every authenticated POST can get, with what each means here.
_POST_ERRORS = {
    "400": "The body is not a valid request (the error names the parameter), or a parameter is not supported "
           "by the engine serving the model.",
    "401": "No API key, or one that is unknown, revoked or expired.",
    "403": "The organization's routing policy does not allow this model.",
    "404": "The model does not exist or is not served to this key.",
    "409": "The first request with this Idempotency-Key is still running.",
    "413": "The body is larger than the gateway accepts.",
    "422": "This Idempotency-Key was used before with a different request.",
    "429": "A budget is exhausted, or the pool's queue is full (see Retry-After).",
    "503": "No engine can serve the model right now, or a store the gateway needs is down; retry later "
           "(see Retry-After).",
    "504": "The generation ran past its deadline (X-Tollgate-Timeout) and X-Tollgate-Partial was not `allow`.",
}


def _schemas() -> dict:
    """Components generated from the wire types: requests as they are validated, responses as they are sent."""
    _, top = models_json_schema(
        [(ChatCompletionRequest, "validation"), (EmbeddingRequest, "validation"),
         (TextCompletionRequest, "validation"), (CompletionResponse, "serialization"),
         (ChatCompletionResponse, "serialization"), (ChatCompletionChunk, "serialization"),
         (EmbeddingResponse, "serialization"), (ModelList, "serialization"), (ModelCard, "serialization"),
         (ErrorResponse, "serialization")],
        ref_template=REF,
    )
    return top["$defs"]


def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def _error_responses(codes: dict[str, str]) -> dict:
    return {code: {"description": description, "content": {"application/json": {"schema": _ref("ErrorResponse")}}}
            for code, description in codes.items()}


_HEADERS = [
    {"name": "X-Feature", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "The feature (of the key's organization) to bill; default: the key's default feature."},
    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
     "description": "A repeat with the same key and body replays the first answer, unbilled (not with stream)."},
    {"name": "X-Quality", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "`high`: refuse (429) rather than serve a budget-downgraded model."},
    {"name": "X-Tollgate-Timeout", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Seconds the generation may run (above 0, at most the gateway's limit)."},
    {"name": "X-Tollgate-Partial", "in": "header", "required": False,
     "schema": {"type": "string", "enum": ["allow", "deny"]},
     "description": "`allow`: past the deadline, answer with what was generated (finish_reason `length`)."},
    {"name": "X-Tollgate-Optimize", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "`off`, `on`, or a comma-separated list of token-optimization steps."},
]


def _post(operation_id: str, summary: str, request: str, example: dict, success: dict) -> dict:
    return {"post": {
        "operationId": operation_id,
        "summary": summary,
        "parameters": _HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request),
                                                                              "example": example}}},
        "responses": {"200": success, **_error_responses(_POST_ERRORS)},
    }}


@functools.cache
def openapi_document() -> dict:
    """The document as a dict (built once per process: the wire types do not change at run time)."""
    schemas = _schemas()
    chat_success = {
        "description": "The completion; with `stream: true`, server-sent events of chunks ending in `data: [DONE]`.",
        "content": {
            "application/json": {"schema": _ref(ChatCompletionResponse.__name__)},
            "text/event-stream": {"schema": {"type": "string"},
                                  "x-event-schema": _ref(ChatCompletionChunk.__name__)},
        },
    }
    models_errors = _error_responses({"401": _POST_ERRORS["401"]})
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Tollgate OpenAI-compatible API",
            "version": "1",
            "description": "The part of OpenAI's API this gateway serves. Every error has OpenAI's shape: "
                           '{"error": {"message", "type", "param", "code"}}.',
        },
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}],
        "paths": {
            "/v1/chat/completions": _post("createChatCompletion", "Create a chat completion",
                                          ChatCompletionRequest.__name__, CHAT_EXAMPLE, chat_success),
            "/v1/completions": _post(
                "createCompletion", "Create a text completion (legacy)", TextCompletionRequest.__name__,
                COMPLETIONS_EXAMPLE,
                {"description": "The completion; with `stream: true`, server-sent events of completions ending in "
                                "`data: [DONE]`.",
                 "content": {"application/json": {"schema": _ref(CompletionResponse.__name__)},
                             "text/event-stream": {"schema": {"type": "string"},
                                                   "x-event-schema": _ref(CompletionResponse.__name__)}}}),
            "/v1/embeddings": _post("createEmbedding", "Create embeddings", EmbeddingRequest.__name__,
                                    EMBEDDINGS_EXAMPLE,
                                    {"description": "One embedding per input, in input order.",
                                     "content": {"application/json": {"schema": _ref(EmbeddingResponse.__name__)}}}),
            "/v1/models": {"get": {
                "operationId": "listModels",
                "summary": "List the models served to this key",
                "responses": {"200": {"description": "The models.",
                                      "content": {"application/json": {"schema": _ref(ModelList.__name__)}}},
                              **models_errors},
            }},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel",
                "summary": "Retrieve one model",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The model.",
                                      "content": {"application/json": {"schema": _ref(ModelCard.__name__)}}},
                              **models_errors,
                              **_error_responses({"404": "The model does not exist or is not served to this key."})},
            }},
            "/v1/openapi.json": {"get": {
                "operationId": "getOpenAPIDocument",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"ApiKey": {"type": "http", "scheme": "bearer",
                                           "description": "A Tollgate API key: `Authorization: Bearer sk-...`."}},
        },
    }


@functools.cache
def openapi_json() -> bytes:
    return json.dumps(openapi_document(), ensure_ascii=True).encode()
