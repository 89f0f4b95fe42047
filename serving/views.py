"""HTTP in and out for /v1. Thin: parse headers, call serving.chat, shape the response."""

from __future__ import annotations

import json
import logging

import uuid6
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from metering import pricing
from metering.tracing import tracer

from . import errors
from .chat import ChatCall, Settlement, aprepare_chat, authenticate
from .embeddings import aprepare_embeddings, create_embeddings, embedding_attributes
from .engines.registry import served_model_names

logger = logging.getLogger(__name__)


def new_request_id() -> str:
    return uuid6.uuid7().hex


def _read_body(request: HttpRequest) -> bytes:
    limit = settings.TOLLGATE_MAX_REQUEST_BYTES
    too_large = errors.RequestTooLarge(f"The request body is larger than the {limit} bytes this gateway accepts.")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_large
    try:
        body = request.body
    except RequestDataTooBig:
        raise too_large
    if len(body) > limit:
        raise too_large
    return body


def _settlement_headers(response, settlement: Settlement | None) -> None:
    if settlement is None:
        return
    response["X-Tollgate-Cost"] = str(settlement.cost)
    response["X-Tollgate-Model"] = settlement.model
    if settlement.budget_remaining is not None:
        response["X-Tollgate-Budget-Remaining"] = str(settlement.budget_remaining)


def _downgrade_header(response, prepared) -> None:
    if prepared.reservation is not None and prepared.reservation.downgraded:
        response["X-Tollgate-Downgraded"] = prepared.reservation.downgrade_header


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@csrf_exempt
async def chat_completions(request: HttpRequest):
    request_id = new_request_id()
    if request.method != "POST":
        return errors.error_response(errors.MethodNotAllowed("Use POST for /v1/chat/completions."), request_id)
    span = tracer.start_span("POST /v1/chat/completions", kind=SpanKind.SERVER,
                             attributes={"http.request.method": "POST", "url.path": request.path,
                                         "tollgate.request_id": request_id})
    try:
        # The server span is current here, so the auth and route spans are its children.
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            prepared = await aprepare_chat(
                request_id, request.headers.get("Authorization"), request.headers.get("X-Feature"),
                _read_body(request), quality=request.headers.get("X-Quality"),
            )
        call = ChatCall(prepared, span)
        await call.start()  # pool admission: a full queue is a 429 before any byte is sent
        if prepared.body.stream:
            response = StreamingHttpResponse(_stream(call, span), content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            response["X-Request-Id"] = request_id
            response["X-Tollgate-Model"] = prepared.entry.name
            _downgrade_header(response, prepared)
            return response
        body = await call.complete()
    except errors.OpenAIError as exc:
        span.set_attribute("http.response.status_code", exc.status)
        span.set_attribute("error.type", exc.code or exc.type)
        if exc.status >= 500:
            span.set_status(Status(StatusCode.ERROR, exc.message))
        span.end()
        return errors.error_response(exc, request_id)
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()
        raise
    response = JsonResponse(body)
    response["X-Request-Id"] = request_id
    _settlement_headers(response, call.settlement)
    _downgrade_header(response, prepared)
    span.set_attribute("http.response.status_code", 200)
    span.end()
    return response


async def _stream(call: ChatCall, span):
    chunks = call.stream_chunks()
    try:
        async for chunk in chunks:
            yield _sse(chunk)
        yield b"data: [DONE]\n\n"
        span.set_attribute("http.response.status_code", 200)
    except errors.OpenAIError as exc:
        # Headers are gone already; the error travels as an SSE event, as OpenAI does.
        span.set_status(Status(StatusCode.ERROR, exc.message))
        yield _sse(exc.body())
    finally:
        # Settle now, even if the client left and this generator is being closed.
        await chunks.aclose()
        span.end()


def _models_body(names: list[tuple[str, int]]) -> dict:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "tollgate"} for name, created in names],
    }


def _list_models(authorization: str | None) -> list[tuple[str, int]]:
    authenticate(authorization, None)
    served = served_model_names()
    return [(m.name, int(m.created_at.timestamp())) for m in pricing.active_catalog() if m.name in served]


@csrf_exempt
async def models(request: HttpRequest, model_id: str | None = None):
    request_id = new_request_id()
    try:
        if request.method != "GET":
            raise errors.MethodNotAllowed("Use GET for /v1/models.")
        listed = await sync_to_async(_list_models)(request.headers.get("Authorization"))
        if model_id is None:
            response = JsonResponse(_models_body(listed))
        else:
            match = [item for item in listed if item[0] == model_id]
            if not match:
                raise errors.ModelNotFound(f"The model `{model_id}` does not exist or you do not have access to it.",
                                           param="model")
            response = JsonResponse(_models_body(match)["data"][0])
    except errors.OpenAIError as exc:
        return errors.error_response(exc, request_id)
    response["X-Request-Id"] = request_id
    return response


@csrf_exempt
async def embeddings(request: HttpRequest):
    request_id = new_request_id()
    if request.method != "POST":
        return errors.error_response(errors.MethodNotAllowed("Use POST for /v1/embeddings."), request_id)
    span = tracer.start_span("POST /v1/embeddings", kind=SpanKind.SERVER,
                             attributes={"http.request.method": "POST", "url.path": request.path,
                                         "tollgate.request_id": request_id, "gen_ai.operation.name": "embeddings"})
    try:
        prepared = await aprepare_embeddings(request_id, request.headers.get("Authorization"),
                                             request.headers.get("X-Feature"), _read_body(request))
        body, draft = await create_embeddings(prepared)
    except errors.OpenAIError as exc:
        span.set_attribute("http.response.status_code", exc.status)
        span.set_attribute("error.type", exc.code or exc.type)
        span.end()
        return errors.error_response(exc, request_id)
    span.set_attributes(embedding_attributes(draft))
    span.set_attribute("http.response.status_code", 200)
    span.end()
    response = JsonResponse(body)
    response["X-Request-Id"] = request_id
    response["X-Tollgate-Model"] = draft.model_served
    response["X-Tollgate-Cost"] = str(draft.cost_total)
    return response


@csrf_exempt
async def not_found(request: HttpRequest, path: str = ""):
    return errors.error_response(
        errors.NotFound(f"Unknown request URL: {request.method} {request.path}. Please check the URL."),
        new_request_id(),
    )
