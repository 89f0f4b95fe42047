"""/v1/files and /v1/batches on the gateway's Starlette app (plugged in by TOLLGATE_GATEWAY_EXTRA_ROUTES).

Thin, as serving/views.py is: authenticate the key, parse the query or body,
call ``batches.services`` on the thread pool, answer with the wire types of
``batches.protocol`` or OpenAI's error shape.
"""

from __future__ import annotations

import functools
import logging

from django.conf import settings
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.stores import STORE_ERRORS
from core.threads import on_thread_pool
from metering.metrics import observe_http_error
from serving import errors
from serving.bodies import read_body_at_most
from serving.flow.context import new_request_id
from serving.protocol import parse_request
from tenants import services as tenants

from . import services
from .protocol import BatchCreateRequest, BatchList, BatchObject, FileDeleted, FileList, FileObject

logger = logging.getLogger(__name__)

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"]
MAX_PAGE = 100
# Room for the multipart framing and the purpose field around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _tenant(request: Request) -> tenants.TenantContext:
    try:
        return tenants.authenticate_api_key(request.headers.get("authorization"), request.headers.get("x-feature"))
    except tenants.AuthenticationFailed as exc:
        raise errors.InvalidApiKey(exc.reason)
    except tenants.UnknownFeature as exc:
        raise errors.InvalidRequest(str(exc), param="X-Feature", code="unknown_feature")


def endpoint(label: str, methods: tuple[str, ...]):
    """An API endpoint: method check, OpenAI-shaped errors (counted on /metrics), a store outage as a 503."""

    def wrap(handler):
        @functools.wraps(handler)
        async def serve(request: Request) -> Response:
            request_id = new_request_id()
            try:
                if request.method not in methods:
                    raise errors.MethodNotAllowed(f"Use {' or '.join(methods)} for {request.url.path}.",
                                                  allow=", ".join(methods))
                try:
                    response = await handler(request)
                except STORE_ERRORS as exc:
                    logger.warning("store unavailable on %s: %r", request.url.path, exc)
                    raise errors.StoreUnavailable("A store the gateway needs is unavailable; please retry shortly.",
                                                  headers={"Retry-After": "2"}) from exc
            except errors.OpenAIError as exc:
                observe_http_error(label, exc.status, exc.code or exc.type)
                return errors.error_response(exc, request_id)
            response.headers["X-Request-Id"] = request_id
            return response

        return serve

    return wrap


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _page_params(request: Request) -> tuple[str | None, int]:
    query = request.query_params
    unknown = sorted(set(query) - {"after", "limit", "purpose", "order"})
    if unknown:
        raise errors.InvalidRequest(f"Unrecognized query parameter: {unknown[0]}", param=unknown[0],
                                    code="unknown_parameter")
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
        raise errors.InvalidRequest(f"'limit' must be a whole number from 1 to {MAX_PAGE}.", param="limit",
                                    code="invalid_value")
    return query.get("after") or None, int(limit_text)


# ----------------------------------------------------------------- files


def _upload(org_id: int, filename: str, content: bytes, purpose: str) -> FileObject:
    return FileObject.of(services.create_file(org_id, filename, content, purpose))


async def _read_upload(request: Request) -> tuple[str, bytes, str]:
    """The multipart form's file (name, bytes) and purpose, refusing (413) a body past the limit before reading on."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise errors.InvalidRequest("Upload a file as multipart/form-data with fields 'file' and 'purpose'.",
                                    param="file", code="invalid_content_type")
    limit = settings.TOLLGATE_BATCH_FILE_MAX_BYTES + MULTIPART_OVERHEAD_BYTES
    too_large = errors.RequestTooLarge(
        f"The file is larger than the {settings.TOLLGATE_BATCH_FILE_MAX_BYTES} bytes a batch input file may have.")
    body = await read_body_at_most(request, limit, too_large)

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=4, max_part_size=4096)
    except (MultiPartException, ValueError) as exc:
        raise errors.InvalidRequest(f"The multipart body could not be read: {exc}", param="file",
                                    code="invalid_multipart")
    unknown = sorted(set(form) - {"file", "purpose"})
    if unknown:
        raise errors.InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                                    code="unknown_parameter")
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise errors.InvalidRequest("Missing required parameter: 'file'.", param="file",
                                    code="missing_required_parameter")
    if not isinstance(purpose, str):
        raise errors.InvalidRequest("Missing required parameter: 'purpose'.", param="purpose",
                                    code="missing_required_parameter")
    return upload.filename or "", await upload.read(), purpose


@endpoint("files", ("GET", "POST"))
async def files(request: Request) -> Response:
    if request.method == "POST":
        tenant = await on_thread_pool(_tenant)(request)
        filename, content, purpose = await _read_upload(request)
        return _json(await on_thread_pool(_upload)(tenant.org_id, filename, content, purpose))
    return _json(await on_thread_pool(_list_files)(request))


def _list_files(request: Request) -> FileList:
    tenant = _tenant(request)
    after, limit = _page_params(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.InvalidRequest("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    found, more = services.list_files(tenant.org_id, purpose=request.query_params.get("purpose"), after=after,
                                      limit=limit, newest_first=order == "desc")
    data = [FileObject.of(f) for f in found]
    return FileList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                    has_more=more)


def _file_detail(request: Request):
    tenant, file_id = _tenant(request), request.path_params["file_id"]
    if request.method == "DELETE":
        return FileDeleted(id=services.delete_file(tenant.org_id, file_id).pk)
    return FileObject.of(services.org_file(tenant.org_id, file_id))


@endpoint("files", ("GET", "DELETE"))
async def file_detail(request: Request) -> Response:
    return _json(await on_thread_pool(_file_detail)(request))


def _file_content(request: Request) -> bytes:
    return services.file_content(_tenant(request).org_id, request.path_params["file_id"])


@endpoint("files", ("GET",))
async def file_content(request: Request) -> Response:
    return Response(await on_thread_pool(_file_content)(request), media_type="application/jsonl")


# ----------------------------------------------------------------- batches


def _create_batch(tenant: tenants.TenantContext, body: BatchCreateRequest) -> BatchObject:
    return BatchObject.of(services.create_batch(tenant, input_file_id=body.input_file_id, endpoint=body.endpoint,
                                                completion_window=body.completion_window, metadata=body.metadata))


def _list_batches(request: Request) -> BatchList:
    tenant = _tenant(request)
    after, limit = _page_params(request)
    if "purpose" in request.query_params or "order" in request.query_params:
        raise errors.InvalidRequest("Batches are listed newest first, by 'after' and 'limit' only.",
                                    param="purpose" if "purpose" in request.query_params else "order",
                                    code="unknown_parameter")
    found, more = services.list_batches(tenant.org_id, after=after, limit=limit)
    data = [BatchObject.of(b) for b in found]
    return BatchList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=more)


@endpoint("batches", ("GET", "POST"))
async def batches(request: Request) -> Response:
    if request.method == "POST":
        tenant = await on_thread_pool(_tenant)(request)
        limit = settings.TOLLGATE_MAX_REQUEST_BYTES
        raw = await read_body_at_most(request, limit, errors.RequestTooLarge(
            f"The request body is larger than the {limit} bytes this gateway accepts."))
        body = parse_request(BatchCreateRequest, raw)
        return _json(await on_thread_pool(_create_batch)(tenant, body))
    return _json(await on_thread_pool(_list_batches)(request))


def _batch_detail(request: Request) -> BatchObject:
    return BatchObject.of(services.org_batch(_tenant(request).org_id, request.path_params["batch_id"]))


@endpoint("batches", ("GET",))
async def batch_detail(request: Request) -> Response:
    return _json(await on_thread_pool(_batch_detail)(request))


def _cancel(request: Request) -> BatchObject:
    return BatchObject.of(services.cancel_batch(_tenant(request).org_id, request.path_params["batch_id"]))


@endpoint("batches", ("POST",))
async def batch_cancel(request: Request) -> Response:
    return _json(await on_thread_pool(_cancel)(request))


routes = [
    Route("/v1/files", files, methods=ALL_METHODS),
    Route("/v1/files/{file_id}/content", file_content, methods=ALL_METHODS),
    Route("/v1/files/{file_id}", file_detail, methods=ALL_METHODS),
    Route("/v1/batches", batches, methods=ALL_METHODS),
    Route("/v1/batches/{batch_id}/cancel", batch_cancel, methods=ALL_METHODS),
    Route("/v1/batches/{batch_id}", batch_detail, methods=ALL_METHODS),
]
