"""One error shape for /v1, as OpenAI sends it: {"error": {"message", "type", "param", "code"}}.

Service code raises these; the views turn them into responses in one place.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict
from starlette.responses import Response


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The wire type of every /v1 error, in a response body or as a server-sent event."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class OpenAIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def wire(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param,
                                               code=self.code))

    def body(self) -> dict:
        return self.wire().model_dump()


class InvalidRequest(OpenAIError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnsupportedParameter(InvalidRequest):
    """A parameter OpenAI defines that the engine serving this model does not honour (never dropped silently)."""

    code = "unsupported_parameter"

    def __init__(self, param: str, model: str):
        super().__init__(f"The parameter '{param}' is not supported by the engine serving `{model}`; remove it "
                         f"or choose a model whose engine supports it.", param=param)


class RequestTooLarge(OpenAIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class InvalidApiKey(OpenAIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFound(OpenAIError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ModelNotAllowed(OpenAIError):
    """The org's routing policy does not let this request use the model it named."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message, param="model", code=code)


class NotFound(OpenAIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(OpenAIError):
    """Sent with the ``Allow`` header, as HTTP asks of every 405."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str):
        super().__init__(message, headers={"Allow": allow} if allow else None)


class IdempotencyKeyInUse(OpenAIError):
    """The first request with this Idempotency-Key is still running."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_in_use"


class IdempotencyKeyReused(OpenAIError):
    """This Idempotency-Key came with a different request before."""

    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class BudgetExceeded(OpenAIError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class QualityUnavailable(OpenAIError):
    """`X-Quality: high` on a request whose budget is past its downgrade threshold."""

    status = 429
    type = "insufficient_quota"
    code = "budget_downgraded"


class RateLimitExceeded(OpenAIError):
    """A key's or an org's requests or tokens per minute (serving/ratelimits.py); sent with Retry-After.

    OpenAI's shape: ``type`` is the kind of limit ("requests" or "tokens"), ``code`` is ``rate_limit_exceeded``.
    """

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]):
        super().__init__(message, headers=headers)
        self.type = kind


class QueueFull(OpenAIError):
    """The pool's admission queue is full; sent with Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class EngineUnavailable(OpenAIError):
    status = 503
    type = "server_error"
    code = "engine_unavailable"


class StoreUnavailable(OpenAIError):
    """PostgreSQL or Redis is unreachable: the request is refused rather than served unbilled."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class GenerationTimeout(OpenAIError):
    """The generation ran past its deadline and the caller did not take a partial answer."""

    status = 504
    type = "timeout"
    code = "generation_timeout"


def error_response(error: OpenAIError, request_id: str | None = None) -> Response:
    headers = dict(error.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    # ASCII-escaped: a message that quotes a path or header with a lone surrogate still encodes.
    return Response(json.dumps(error.body(), ensure_ascii=True), status_code=error.status, headers=headers,
                    media_type="application/json")
