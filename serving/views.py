"""The HTTP edge for /v1, on Starlette: authenticate the key, parse the body into wire types, call the flow.

Thin by design: headers and body in; a ``RequestContext`` to ``serving.flow``;
its outcome (wire types and headers) out as JSON or server-sent events.
Nothing past this module sees HTTP.

Why not Django views: under ASGI, Django's handler runs the request signals'
sync receivers in a fresh thread per request and builds an HttpRequest for
middleware the OpenAI API does not use (sessions, CSRF, users). That cost
was a third of the gateway's per-request overhead. The OpenAI API is a small,
fixed set of JSON routes, so it is served by Starlette (the toolkit under
vLLM's own OpenAI server) in the same process, with the same settings,
models and service functions; everything else stays Django (tollgate/asgi.py).
"""

from __future__ import annotations

import asyncio
import logging
from importlib import import_module

from django.conf import settings
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core import db
from core.stores import STORE_ERRORS
from core.threads import on_thread_pool
from metering import pricing
from metering.metrics import observe_http_error
from metering.tracing import tenant_attributes, tracer
from tenants import services as tenants

from . import errors
from .bodies import read_body_at_most
from .flow.context import RequestContext, new_request_id
from .flow.pipeline import serve_chat, serve_completions, serve_embeddings
from .openapi import openapi_json
from .pools import served_model_names
from .stages import optimize_tokens
from .protocol import (ChatCompletionRequest, EmbeddingRequest, ModelCard, ModelList, TextCompletionRequest,
                       parse_request)

logger = logging.getLogger(__name__)

# The endpoint label of tollgate_http_errors_total: the routes, and "other" for anything else (bounded).
_ENDPOINTS = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions",
              "/v1/embeddings": "embeddings", "/v1/models": "models"}


def _error_response(error: errors.OpenAIError, request_id: str | None = None, *, path: str = "") -> Response:
    """The error as OpenAI's body, counted on /metrics (refusals that never reach a ledger row included)."""
    endpoint = _ENDPOINTS.get(path) or ("models" if path.startswith("/v1/models/") else "other")
    observe_http_error(endpoint, error.status, error.code or error.type)
    return errors.error_response(error, request_id)


def authenticate(authorization: str | None, feature: str | None, blocking: bool = True) -> tenants.TenantContext:
    try:
        return tenants.authenticate_api_key(authorization, feature, blocking=blocking)
    except tenants.AuthenticationFailed as exc:
        raise errors.InvalidApiKey(exc.reason)
    except tenants.UnknownFeature as exc:
        raise errors.InvalidRequest(str(exc), param="X-Feature", code="unknown_feature")


async def _authenticate_with_span(request_id: str, authorization: str | None, feature: str | None,
                                  parent: trace.Span) -> tenants.TenantContext:
    with tracer.start_as_current_span("auth", context=trace.set_span_in_context(parent),
                                      attributes={"tollgate.request_id": request_id}) as span:
        try:
            # A memoized key is checked right here; one that needs the database goes to the thread pool.
            tenant = authenticate(authorization, feature, blocking=False)
        except tenants.WouldBlock:
            tenant = await _authenticate_on_thread_pool(authorization, feature)
        attributes = _tenant_attributes(tenant)
        span.set_attributes(attributes)
        parent.set_attributes(attributes)
        return tenant


_authenticate_on_thread_pool = on_thread_pool(authenticate)


def _tenant_attributes(tenant: tenants.TenantContext) -> dict:
    return tenant_attributes(org_slug=tenant.org_slug, org_id=tenant.org_id, feature=tenant.feature_slug,
                             api_key_id=tenant.api_key_id, user_id=tenant.user_id)


async def _read_body(request: Request) -> bytes:
    """The body, refusing (413) one over the limit before reading it all."""
    limit = settings.TOLLGATE_MAX_REQUEST_BYTES
    return await read_body_at_most(request, limit, errors.RequestTooLarge(
        f"The request body is larger than the {limit} bytes this gateway accepts."))


def _json(model, request_id: str, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), media_type="application/json",
                    headers={"X-Request-Id": request_id, **(headers or {})})


def _server_span(name: str, request: Request, request_id: str, **attributes) -> trace.Span:
    return tracer.start_span(name, kind=SpanKind.SERVER,
                             attributes={"http.request.method": "POST", "url.path": request.url.path,
                                         "tollgate.request_id": request_id, **attributes})


async def _serve(request: Request, request_id: str, span: trace.Span, wire_type, serve):
    """``(outcome, None)`` from the flow, or ``(None, error response)``; the span is ended on any error."""
    db.use_async_pool_on_this_loop()  # the flow's budget hold and settlement run from this loop
    try:
        try:
            return await serve(await _context(request, request_id, span, wire_type)), None
        except STORE_ERRORS as exc:
            raise store_unavailable(exc, request.url.path) from exc
    except errors.OpenAIError as exc:
        span.set_attribute("http.response.status_code", exc.status)
        span.set_attribute("error.type", exc.code or exc.type)
        if exc.status >= 500:
            span.set_status(Status(StatusCode.ERROR, exc.message))
        span.end()
        return None, _error_response(exc, request_id, path=request.url.path)
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()
        raise


def store_unavailable(exc: BaseException, path: str) -> errors.StoreUnavailable:
    """A store the request needs is down (fail closed: nothing is served that could not be billed)."""
    logger.warning("store unavailable on %s: %r", path, exc)
    return errors.StoreUnavailable("A store the gateway needs is unavailable; please retry shortly.",
                                   headers={"Retry-After": "2"})


async def _context(request: Request, request_id: str, span: trace.Span, wire_type) -> RequestContext:
    """Authenticate (401 before the body is even parsed), then parse the body into ``wire_type``."""
    tenant = await _authenticate_with_span(request_id, request.headers.get("authorization"),
                                           request.headers.get("x-feature"), span)
    body = parse_request(wire_type, await _read_body(request))
    ctx = RequestContext(tenant=tenant, request=body, request_id=request_id, span=span,
                         quality_high=request.headers.get("x-quality", "").strip().lower() == "high",
                         idempotency_key=request.headers.get("idempotency-key"),
                         cache_control=request.headers.get("cache-control"))
    timeout = request.headers.get("x-tollgate-timeout")
    if timeout is not None:
        ctx.timeout_s = generation_timeout_s(timeout)
    partial = request.headers.get("x-tollgate-partial")
    if partial is not None:
        ctx.partial_allowed = partial_allowed(partial)
    optimize = request.headers.get("x-tollgate-optimize")
    if optimize is not None:
        ctx.token_steps = optimize_tokens.parse_steps(optimize)
    return ctx


def generation_timeout_s(value: str) -> float:
    """X-Tollgate-Timeout: seconds the generation may run, up to TOLLGATE_GENERATION_TIMEOUT_S."""
    limit = settings.TOLLGATE_GENERATION_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= limit:  # (NaN fails this too)
        raise errors.InvalidRequest(f"X-Tollgate-Timeout must be a number of seconds above 0 and at most "
                                    f"{limit:g}.", param="X-Tollgate-Timeout", code="invalid_header")
    return seconds


def partial_allowed(value: str) -> bool:
    """X-Tollgate-Partial: ``allow`` takes what was generated when the deadline passes; ``deny`` a 504."""
    value = value.strip().lower()
    if value not in ("allow", "deny"):
        raise errors.InvalidRequest("X-Tollgate-Partial must be `allow` or `deny`.", param="X-Tollgate-Partial",
                                    code="invalid_header")
    return value == "allow"


async def chat_completions(request: Request) -> Response:
    return await _generation(request, "/v1/chat/completions", ChatCompletionRequest, serve_chat)


async def completions(request: Request) -> Response:
    """POST /v1/completions: the legacy text endpoint, on the same flow as chat."""
    return await _generation(request, "/v1/completions", TextCompletionRequest, serve_completions,
                             **{"gen_ai.operation.name": "text_completion"})


async def _generation(request: Request, path: str, wire_type, serve, **span_attributes) -> Response:
    """A generating endpoint: the flow's answer as JSON, or as server-sent events when it streams."""
    request_id = new_request_id()
    if request.method != "POST":
        return _error_response(errors.MethodNotAllowed(f"Use POST for {path}.", allow="POST"),
                               request_id, path=request.url.path)
    span = _server_span(f"POST {path}", request, request_id, **span_attributes)
    outcome, refused = await _serve(request, request_id, span, wire_type, serve)
    if refused is not None:
        return refused
    if outcome.chunks is not None:
        return SettlingStreamingResponse(_sse(outcome.chunks, span), outcome.close, span, headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": request_id, **outcome.headers,
        })
    span.set_attribute("http.response.status_code", 200)
    span.end()
    return _json(outcome.response, request_id, outcome.headers)


async def _sse(chunks, span: trace.Span):
    # Each list of chunks (what was ready together) is one write: one send, one system call.
    async for ready in chunks:
        yield b"".join([b"data: " + (chunk if isinstance(chunk, bytes) else chunk.model_dump_json().encode()) + b"\n\n"
                        for chunk in ready])
    yield b"data: [DONE]\n\n"
    span.set_attribute("http.response.status_code", 200)


class SettlingStreamingResponse(StreamingResponse):
    """Server-sent events whose flow is closed (and so settled) however the response ends.

    Closing the body generator alone is not enough: a client that leaves before Starlette first asks
    the generator for a chunk leaves it unstarted, and closing an unstarted generator runs none of it.
    """

    def __init__(self, content, close, span: trace.Span, headers: dict[str, str]):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._close, self._span = close, span

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: the server keeps cancelling this task once its client is gone.
            try:
                await asyncio.shield(self._close())
            finally:
                self._span.end()


async def embeddings(request: Request) -> Response:
    request_id = new_request_id()
    if request.method != "POST":
        return _error_response(errors.MethodNotAllowed("Use POST for /v1/embeddings.", allow="POST"),
                               request_id, path=request.url.path)
    span = _server_span("POST /v1/embeddings", request, request_id, **{"gen_ai.operation.name": "embeddings"})
    outcome, refused = await _serve(request, request_id, span, EmbeddingRequest, serve_embeddings)
    if refused is not None:
        return refused
    span.set_attribute("http.response.status_code", 200)
    span.end()
    return _json(outcome.response, request_id, outcome.headers)


def _list_models(authorization: str | None) -> list[ModelCard]:
    authenticate(authorization, None)
    served = served_model_names()
    return [ModelCard(id=m.name, created=int(m.created_at.timestamp()))
            for m in pricing.active_catalog() if m.name in served]


async def models(request: Request) -> Response:
    request_id = new_request_id()
    model_id = request.path_params.get("model_id")
    try:
        if request.method != "GET":
            raise errors.MethodNotAllowed("Use GET for /v1/models.", allow="GET")
        try:
            listed = await on_thread_pool(_list_models)(request.headers.get("authorization"))
        except STORE_ERRORS as exc:
            raise store_unavailable(exc, request.url.path) from exc
        if model_id is None:
            return _json(ModelList(data=listed), request_id)
        match = [card for card in listed if card.id == model_id]
        if not match:
            raise errors.ModelNotFound(f"The model `{model_id}` does not exist or you do not have access to it.",
                                       param="model")
        return _json(match[0], request_id)
    except errors.OpenAIError as exc:
        return _error_response(exc, request_id, path=request.url.path)


async def openapi_document(request: Request) -> Response:
    """The OpenAPI description of /v1 (serving/openapi.py): public, the same for everyone, no tenant data."""
    if request.method not in ("GET", "HEAD"):
        return _error_response(errors.MethodNotAllowed("Use GET for /v1/openapi.json.", allow="GET, HEAD"),
                               new_request_id(), path=request.url.path)
    return Response(openapi_json(), media_type="application/json")


async def not_found(request: Request) -> Response:
    return _error_response(
        errors.NotFound(f"Unknown request URL: {request.method} {request.url.path}. Please check the URL."),
        new_request_id(), path=request.url.path,
    )


async def internal_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected still answers in OpenAI's shape (the traceback goes to the log)."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(errors.OpenAIError("The gateway had an internal error; please retry.",
                                              code="internal_error"), path=request.url.path)


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals in OpenAI's shape: a path no route matches (one with a newline in it, say)."""
    if exc.status_code == 405:
        error = errors.MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.",
                                        allow=(exc.headers or {}).get("Allow", ""))
    elif exc.status_code == 404:
        error = errors.NotFound(f"Unknown request URL: {request.method} {request.url.path}. Please check the URL.")
    else:
        error = errors.InvalidRequest(str(exc.detail))
        error.status = exc.status_code
    return _error_response(error, new_request_id(), path=request.url.path)


def extra_routes() -> list[Route]:
    """Routes apps above serving add to /v1 (TOLLGATE_GATEWAY_EXTRA_ROUTES), so serving never imports them."""
    routes: list[Route] = []
    for path in settings.TOLLGATE_GATEWAY_EXTRA_ROUTES:
        module, _, name = path.rpartition(".")
        routes.extend(getattr(import_module(module), name))
    return routes


# Every method reaches the endpoints (TRACE and CONNECT too), which answer a wrong one with OpenAI's 405.
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"]

# The /v1 application.
gateway = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=ALL_METHODS),
        Route("/v1/completions", completions, methods=ALL_METHODS),
        Route("/v1/embeddings", embeddings, methods=ALL_METHODS),
        Route("/v1/models", models, methods=ALL_METHODS),
        Route("/v1/models/{model_id:path}", models, methods=ALL_METHODS),
        Route("/v1/openapi.json", openapi_document, methods=ALL_METHODS),
        *extra_routes(),
        Route("/v1/{path:path}", not_found, methods=ALL_METHODS),
    ],
    exception_handlers={HTTPException: http_error, Exception: internal_error},
)
