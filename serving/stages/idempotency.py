"""Idempotency: a request repeated with the same ``Idempotency-Key`` gets the first one's answer, unbilled.

Stripe's semantics, per organization, for ``TOLLGATE_IDEMPOTENCY_TTL_S``:

* the first request with a key claims it and runs; its answer is kept once it has settled;
* a repeat with the same key and the same request replays that answer (same id, same content,
  ``Idempotent-Replayed: true``, cost 0) and runs nothing: no engine, no budget, no usage row;
* the same key with a different request is a 422; a repeat while the first still runs is a 409;
* a first request that fails gives its key back, so the caller's retry runs.

Keys live in Django's cache (Redis in production, so every web process sees them; ``cache.add``
is atomic there). A streamed request cannot carry a key yet (a 400 says so): its answer would
have to be kept and replayed as a stream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from .. import errors
from ..flow.context import RequestContext

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Replay:
    """A kept answer: the response body as sent, and its headers."""

    body: str
    headers: dict[str, str]


def _cache_key(ctx: RequestContext) -> str:
    digest = hashlib.sha256(ctx.idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"tollgate:idempotency:{ctx.tenant.org_id}:{digest}"


def _fingerprint(ctx: RequestContext) -> str:
    # The parsed request, not the raw bytes: the same request sent with other spacing is the same request.
    # The feature is part of it: the same body billed to another feature is another request.
    text = f"{ctx.endpoint}\n{ctx.tenant.feature_slug}\n{ctx.request.model_dump_json()}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def run_in_memory(ctx: RequestContext) -> bool:
    """Done without I/O for a request that sent no Idempotency-Key."""
    return ctx.idempotency_key is None


def run(ctx: RequestContext) -> None:
    if ctx.idempotency_key is None:
        return
    key = ctx.idempotency_key
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise errors.InvalidRequest(f"'{HEADER}' must be 1 to {MAX_KEY_LENGTH} printable characters.",
                                    param=HEADER, code="invalid_value")
    if getattr(ctx.request, "stream", False):
        raise errors.InvalidRequest(f"'{HEADER}' cannot be used with stream=true yet; send stream=false to make "
                                    f"this request idempotent.", param=HEADER, code="unsupported_parameter")
    cache_key, fingerprint = _cache_key(ctx), _fingerprint(ctx)
    if _claim(ctx, cache_key, fingerprint):
        return
    kept = cache.get(cache_key)
    if kept is None:  # the first request failed, or its answer expired, in between: claim it once more
        if _claim(ctx, cache_key, fingerprint):
            return
        kept = cache.get(cache_key) or {"state": "running", "fingerprint": fingerprint}
    if kept["fingerprint"] != fingerprint:
        raise errors.IdempotencyKeyReused(
            f"This {HEADER} was already used with a different request; use a new key for a new request.")
    if kept["state"] == "running":
        raise errors.IdempotencyKeyInUse(
            f"A request with this {HEADER} is still being processed; retry once it has finished.",
            headers={"Retry-After": "1"})
    ctx.replay = Replay(body=kept["body"], headers=dict(kept["headers"]))
    if ctx.span is not None:
        ctx.span.set_attribute("tollgate.idempotent_replay", True)


def _claim(ctx: RequestContext, cache_key: str, fingerprint: str) -> bool:
    """Take the key for this request (atomic across processes); once it ends, keep its answer or give it back."""
    if not cache.add(cache_key, {"state": "running", "fingerprint": fingerprint},
                     timeout=settings.TOLLGATE_IDEMPOTENCY_RUNNING_S):
        return False
    ctx.on_answered.append(lambda body, headers: _keep(cache_key, fingerprint, body, headers))
    ctx.on_failed.append(lambda: cache.delete(cache_key))
    return True


def _keep(cache_key: str, fingerprint: str, body: str, headers: dict[str, str]) -> None:
    cache.set(cache_key, {"state": "done", "fingerprint": fingerprint, "body": body, "headers": headers},
              timeout=settings.TOLLGATE_IDEMPOTENCY_TTL_S)


def replay_headers(replay: Replay) -> dict[str, str]:
    """The first answer's headers, marked as a replay, which costs nothing."""
    return {**replay.headers, "X-Tollgate-Cost": "0", "X-Tollgate-Attempts": "0", "Idempotent-Replayed": "true"}
