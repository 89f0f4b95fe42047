"""HTTP in and out for /v1, on Starlette. Thin: read headers and body, call serving.chat, shape the response.

Why not Django views: under ASGI, Django's handler runs the request signals'
sync receivers in a fresh thread per request and builds an HttpRequest for
middleware the OpenAI API does not use (sessions, CSRF, users). That cost
was a third of the gateway's per-request overhead. The OpenAI API is a small,
fixed set of JSON routes, so it is served by Starlette (the toolkit under
vLLM's own OpenAI server) in the same process, with the same settings,
models and service functions; everything else stays Django (tollgate/asgi.py).
"""

from __future__ import annotations

import json
import logging

import uuid6
from django.conf import settings
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from metering import pricing
from metering.tracing import tracer

from . import errors
from .chat import ChatCall, Settlement, aprepare_chat, authenticate, on_thread_pool
from .embeddings import aprepare_embeddings, create_embeddings, embedding_attributes
from .engines.registry import served_model_names

logger = logging.getLogger(__name__)


def new_request_id() -> str:
    return uuid6.uuid7().hex


async def _read_body(request: Request) -> bytes:
    """The body, refusing (413) one over the limit before reading it all."""
    limit = settings.TOLLGATE_MAX_REQUEST_BYTES
    too_large = errors.RequestTooLarge(f"The request body is larger than the {limit} bytes this gateway accepts.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: dict, request_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, headers={"X-Request-Id": request_id, **(headers or {})})


def _settlement_headers(settlement: Settlement | None) -> dict[str, str]:
    if settlement is None:
        return {}
    headers = {"X-Tollgate-Cost": str(settlement.cost), "X-Tollgate-Model": settlement.model}
    if settlement.budget_remaining is not None:
        headers["X-Tollgate-Budget-Remaining"] = str(settlement.budget_remaining)
    return headers


def _downgrade_header(prepared) -> dict[str, str]:
    if prepared.reservation is not None and prepared.reservation.downgraded:
        return {"X-Tollgate-Downgraded": prepared.reservation.downgrade_header}
    return {}


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def chat_completions(request: Request) -> Response:
    request_id = new_request_id()
    if request.method != "POST":
        return errors.error_response(errors.MethodNotAllowed("Use POST for /v1/chat/completions."), request_id)
    span = tracer.start_span("POST /v1/chat/completions", kind=SpanKind.SERVER,
                             attributes={"http.request.method": "POST", "url.path": request.url.path,
                                         "tollgate.request_id": request_id})
    try:
        # The server span is current here, so the auth and route spans are its children.
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            prepared = await aprepare_chat(
                request_id, request.headers.get("authorization"), request.headers.get("x-feature"),
                await _read_body(request), quality=request.headers.get("x-quality"),
            )
        call = ChatCall(prepared, span)
        await call.start()  # pool admission: a full queue is a 429 before any byte is sent
        if prepared.body.stream:
            return StreamingResponse(_stream(call, span), media_type="text/event-stream", headers={
                "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": request_id,
                "X-Tollgate-Model": prepared.entry.name, **_downgrade_header(prepared),
            })
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
    span.set_attribute("http.response.status_code", 200)
    span.end()
    return _json(body, request_id, {**_settlement_headers(call.settlement), **_downgrade_header(prepared)})


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
        # Settle now, even if the client left and this generator is being closed (stream_chunks shields
        # the settlement, so it completes even when this await is cancelled).
        try:
            await chunks.aclose()
        finally:
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


async def models(request: Request) -> Response:
    request_id = new_request_id()
    model_id = request.path_params.get("model_id")
    try:
        if request.method != "GET":
            raise errors.MethodNotAllowed("Use GET for /v1/models.")
        listed = await on_thread_pool(_list_models)(request.headers.get("authorization"))
        if model_id is None:
            return _json(_models_body(listed), request_id)
        match = [item for item in listed if item[0] == model_id]
        if not match:
            raise errors.ModelNotFound(f"The model `{model_id}` does not exist or you do not have access to it.",
                                       param="model")
        return _json(_models_body(match)["data"][0], request_id)
    except errors.OpenAIError as exc:
        return errors.error_response(exc, request_id)


async def embeddings(request: Request) -> Response:
    request_id = new_request_id()
    if request.method != "POST":
        return errors.error_response(errors.MethodNotAllowed("Use POST for /v1/embeddings."), request_id)
    span = tracer.start_span("POST /v1/embeddings", kind=SpanKind.SERVER,
                             attributes={"http.request.method": "POST", "url.path": request.url.path,
                                         "tollgate.request_id": request_id, "gen_ai.operation.name": "embeddings"})
    try:
        prepared = await aprepare_embeddings(request_id, request.headers.get("authorization"),
                                             request.headers.get("x-feature"), await _read_body(request))
        body, draft = await create_embeddings(prepared)
    except errors.OpenAIError as exc:
        span.set_attribute("http.response.status_code", exc.status)
        span.set_attribute("error.type", exc.code or exc.type)
        span.end()
        return errors.error_response(exc, request_id)
    span.set_attributes(embedding_attributes(draft))
    span.set_attribute("http.response.status_code", 200)
    span.end()
    return _json(body, request_id, {"X-Tollgate-Model": draft.model_served, "X-Tollgate-Cost": str(draft.cost_total)})


async def not_found(request: Request) -> Response:
    return errors.error_response(
        errors.NotFound(f"Unknown request URL: {request.method} {request.url.path}. Please check the URL."),
        new_request_id(),
    )


async def internal_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected still answers in OpenAI's shape (the traceback goes to the log)."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return errors.error_response(errors.OpenAIError("The gateway had an internal error; please retry."))


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

# The /v1 application. Every method reaches the endpoints, which answer a wrong one with OpenAI's 405.
gateway = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=ALL_METHODS),
        Route("/v1/embeddings", embeddings, methods=ALL_METHODS),
        Route("/v1/models", models, methods=ALL_METHODS),
        Route("/v1/models/{model_id:path}", models, methods=ALL_METHODS),
        Route("/v1/{path:path}", not_found, methods=ALL_METHODS),
    ],
    exception_handlers={Exception: internal_error},
)
