"""Reading a request body with a size limit, for every endpoint at the HTTP edge (the /v1 gateway, the
Batch API's uploads)."""

from __future__ import annotations

from starlette.requests import Request

from . import errors


async def read_body_at_most(request: Request, limit: int, too_large: errors.OpenAIError) -> bytes:
    """The body, refusing one over ``limit`` bytes (raising ``too_large``) before reading it all."""
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
