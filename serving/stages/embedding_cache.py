"""Embedding cache: a /v1/embeddings request whose every text was embedded before, by the same tenant
scope on the same model, is answered from the kept vectors.

The same rules as the chat cache (serving/stages/cache.py): after route,
before reserve_budget; a hit is one cache-hit attempt (no engine, nothing
billed unless the org prices hits, the model's price for the tokens as
savings); ``Cache-Control`` and the feature's policy are honoured;
``X-Tollgate-Cache`` says hit, miss or bypass. Vectors are kept per text, so a
later request with the same texts in another grouping or order hits too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from caching import services as caching
from caching.services import BYPASS, EMBEDDING, HEADER, HIT, LAYER_HEADER, MISS, CacheScope
from core.stores import STORE_ERRORS
from metering.models import UsageRecord

from .. import errors
from ..flow.context import EMBEDDINGS, Attempt, RequestContext

logger = logging.getLogger(__name__)


@dataclass
class CachedEmbeddings:
    """A hit's result, shaped as an embedding result for settle and respond."""

    vectors: list[list[float]]
    prompt_tokens: int
    engine_seconds: float = 0.0
    queue_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def run(ctx: RequestContext) -> None:
    if ctx.endpoint != EMBEDDINGS:
        return
    try:
        directives = caching.parse_cache_control(ctx.cache_control)
    except caching.BadCacheControl as exc:
        raise errors.InvalidRequest(str(exc), param="Cache-Control", code="invalid_value")
    scope = CacheScope.of(ctx.tenant)
    policy = caching.policy_for(scope.org_id, scope.feature)
    if not policy.embeddings or not (directives.may_read or directives.may_write):
        ctx.response_headers[HEADER] = BYPASS
        return
    option = ctx.route.primary
    texts = ctx.request.texts
    vectors, keys = None, None
    if directives.may_read:
        try:
            vectors, keys = caching.lookup_embeddings(scope, option.model, texts, directives)
        except STORE_ERRORS as exc:  # a cache never fails a request: served as a miss, not kept
            logger.warning("embedding cache store unavailable; serving without it: %r", exc)
            ctx.response_headers[HEADER] = BYPASS
            return
    if vectors is not None:
        now = time.perf_counter()
        result = CachedEmbeddings(vectors=vectors, prompt_tokens=option.estimate.prompt_tokens,
                                  extra={"cache_layer": EMBEDDING, "cache_hit_price": policy.hit_price})
        ctx.attempts.append(Attempt(option=option, kind=UsageRecord.AttemptKind.CACHE_HIT, result=result,
                                    started=now, finished=now))
        ctx.cache_hit = result
        ctx.response_headers[HEADER] = HIT
        ctx.response_headers[LAYER_HEADER] = EMBEDDING
        return
    ctx.response_headers[HEADER] = MISS
    if directives.may_write:
        keys = keys or caching.embedding_keys(scope, option.model, texts)
        ctx.on_answered.append(lambda body, headers: _keep(ctx, scope, keys, policy.ttl_s))


def _keep(ctx: RequestContext, scope: CacheScope, keys: list[str], ttl_s: int) -> None:
    attempt = ctx.attempts[-1] if ctx.attempts else None
    if attempt is None or attempt.status != UsageRecord.Status.OK or attempt.result is None:
        return
    try:
        caching.store_embeddings(scope, keys, attempt.result.vectors, ttl_s)
    except STORE_ERRORS as exc:  # the answer was served; not keeping it costs only a later miss
        logger.warning("embedding cache store unavailable; the vectors were not kept: %r", exc)
