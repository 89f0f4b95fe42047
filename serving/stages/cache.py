"""Cache: answer a chat request from the exact or the semantic cache, before any budget is held.

Runs after route (the key holds the served model) and before reserve_budget,
so a hit never holds budget for a generation that will not run. A hit is one
attempt of kind cache-hit: no engine, no GPU time, no tokens billed (an org's
cache policy may set a price per hit), what the served model would have cost
recorded as ``savings_cache``; the flow settles it like any other attempt and
answers it through the same respond code, streamed as SSE when asked.

Only deterministic requests (temperature 0 or a fixed seed, one choice) are
looked up or kept; the caller's ``Cache-Control`` (no-store, no-cache,
max-age=N) and the feature's policy are honoured. ``X-Tollgate-Cache`` says
hit, miss or bypass (not looked up); a semantic hit adds its similarity.

The semantic lookup embeds the last user message with all-MiniLM-L6-v2 and
asks ``caching.semantic`` for a verified match within the tenant's
partition; the vector is kept for storing the answer on a miss.
"""

from __future__ import annotations

import json
import logging
import time

from caching import semantic
from caching import services as caching
from caching.services import BYPASS, HEADER, HIT, LAYER_HEADER, MISS, SIMILARITY_HEADER, CacheScope
from core.stores import STORE_ERRORS
from core.threads import on_thread_pool
from metering.models import UsageRecord

from .. import errors
from ..engines.base import GenerationResult
from ..flow.context import CHAT, Attempt, RequestContext
from ..protocol import ChatCompletionRequest, ChatCompletionResponse

logger = logging.getLogger(__name__)

# Fields that do not change the answer: how it is delivered, and the caller's own labels.
_DELIVERY_FIELDS = {"stream", "stream_options", "user", "metadata", "safety_identifier", "prompt_cache_key",
                    "model", "messages", "max_tokens", "max_completion_tokens"}


def is_deterministic(request: ChatCompletionRequest) -> bool:
    return (request.temperature == 0 or request.seed is not None) and request.n in (None, 1)


def _text(text: str) -> str:
    return " ".join(text.split())  # spacing the caller did not mean (trailing newlines, doubled spaces)


def _message(message) -> dict:
    out = {"role": message.role, "content": _text(message.text)}
    if message.name is not None:
        out["name"] = message.name
    return out


def _settings_of(request: ChatCompletionRequest, max_tokens: int) -> dict:
    data = request.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=_DELIVERY_FIELDS)
    data["max_output_tokens"] = max_tokens  # one name for max_tokens and max_completion_tokens
    return data


def fingerprint(request: ChatCompletionRequest, max_tokens: int) -> str:
    """The request as the cache compares it: messages, tools, response format and sampling parameters."""
    return json.dumps({"messages": [_message(m) for m in request.messages], **_settings_of(request, max_tokens)},
                      sort_keys=True, separators=(",", ":"))


def semantic_question(request: ChatCompletionRequest, max_tokens: int) -> tuple[str, str] | None:
    """(everything but the last user message, that message) when the request ends with a user message."""
    last = request.messages[-1]
    if last.role != "user" or not _text(last.text):
        return None
    context = json.dumps({"messages": [_message(m) for m in request.messages[:-1]],
                          **_settings_of(request, max_tokens)}, sort_keys=True, separators=(",", ":"))
    return context, _text(last.text)


def _directives(ctx: RequestContext):
    try:
        return caching.parse_cache_control(ctx.cache_control)
    except caching.BadCacheControl as exc:
        raise errors.InvalidRequest(str(exc), param="Cache-Control", code="invalid_value")


def run_in_memory(ctx: RequestContext) -> bool:
    """Finish the stage without I/O where the request is one the cache would neither answer nor keep
    (most requests: not deterministic, or the policy has the caches off); False when it needs ``run``.

    It never blocks, so the flow calls it on the event loop or on the thread of the stage before it.
    """
    if ctx.endpoint != CHAT:
        return True
    directives = _directives(ctx)
    if not ((directives.may_read or directives.may_write) and is_deterministic(ctx.request)):
        ctx.response_headers[HEADER] = BYPASS
        return True
    policy = caching.memoized_policy(ctx.tenant.org_id, ctx.tenant.feature_slug)
    if policy is not None and not (policy.exact or policy.semantic):
        ctx.response_headers[HEADER] = BYPASS
        return True
    return False


async def run(ctx: RequestContext) -> None:
    if ctx.endpoint != CHAT:
        return
    directives = _directives(ctx)
    try:
        await _look_up(ctx, directives)
    except errors.OpenAIError:
        raise
    except STORE_ERRORS as exc:
        # A cache never fails a request: with its store down the request is served as a miss, not kept.
        logger.warning("cache store unavailable; serving without the cache: %r", exc)
        ctx.response_headers[HEADER] = BYPASS
    except Exception:
        # Nor does a fault in the cache's own code: logged with its traceback, the request is generated.
        logger.exception("cache lookup failed; serving without the cache")
        ctx.response_headers[HEADER] = BYPASS


async def _look_up(ctx: RequestContext, directives) -> None:
    request: ChatCompletionRequest = ctx.request
    scope = CacheScope.of(ctx.tenant)
    option = ctx.route.primary
    policy = (caching.memoized_policy(scope.org_id, scope.feature)
              or await on_thread_pool(caching.policy_for)(scope.org_id, scope.feature))
    wanted = directives.may_read or directives.may_write
    if not (wanted and is_deterministic(request) and (policy.exact or policy.semantic)):
        ctx.response_headers[HEADER] = BYPASS
        return
    max_tokens = option.estimate.max_tokens
    exact_print = fingerprint(request, max_tokens)
    question = semantic_question(request, max_tokens) if policy.semantic else None
    vector = None  # the question's embedding, made only when its partition holds questions to compare with
    if directives.may_read:
        found = None
        if policy.exact:
            found = await on_thread_pool(caching.lookup_exact)(scope, option.model, exact_print, directives)
        if found is None and question is not None:
            found, vector = await _look_up_semantic(scope, option.model, question, directives)
        if found is not None:
            _answer_from_cache(ctx, found, policy.hit_price)
            return
    ctx.response_headers[HEADER] = MISS
    if directives.may_write:
        # (Kept without a vector when none was needed: the next question in its partition embeds it.)
        ctx.on_answered.append(lambda body, headers: _keep(ctx, scope, policy, exact_print, question, vector, body))


async def _look_up_semantic(scope: CacheScope, model: str, question: tuple[str, str], directives):
    """(the semantic layer's answer or None, the question's vector or None). An empty partition costs one
    query and no embedding; one this process knows holds questions, no query before the embedding."""
    context, text = question
    if not semantic.occupied_here(scope, model, context):
        probe = await on_thread_pool(semantic.search)(scope, model, context, text, None, directives)
        if not probe.needs_vector:
            return None, None
    vector = await embed_question(text)
    if vector is None:
        return None, None
    return await on_thread_pool(semantic.lookup)(scope, model, context, text, vector, directives), vector


async def embed_question(text: str) -> list[float] | None:
    """The question's vector; None when the embedder fails (the request is served without the semantic layer:
    a cache is never a reason to fail a request)."""
    from ..engines.embeddings import get_embedder  # torch: loaded only where the semantic cache runs

    try:
        return (await get_embedder().embed([text])).vectors[0]
    except Exception:
        logger.exception("semantic cache: embedding the question failed; serving without the semantic layer")
        return None


def _answer_from_cache(ctx: RequestContext, found: caching.CachedAnswer, hit_price) -> None:
    kept = ChatCompletionResponse.model_validate_json(found.body)
    choice = kept.choices[0]
    result = GenerationResult(
        text=choice.message.content or "", prompt_tokens=kept.usage.prompt_tokens,
        completion_tokens=kept.usage.completion_tokens, finish_reason=choice.finish_reason or "stop",
        extra={"cache_layer": found.layer, "cache_hit_price": hit_price})
    now = time.perf_counter()
    ctx.attempts.append(Attempt(option=ctx.route.primary, kind=UsageRecord.AttemptKind.CACHE_HIT, result=result,
                                started=now, finished=now))
    ctx.cache_hit = found
    ctx.response_headers[HEADER] = HIT
    ctx.response_headers[LAYER_HEADER] = found.layer
    ctx.response_headers["Age"] = str(int(found.age_s))
    if found.similarity is not None:
        ctx.response_headers[SIMILARITY_HEADER] = f"{found.similarity:.4f}"
    if ctx.span is not None:
        ctx.span.set_attribute("tollgate.cache", found.layer)


def _keep(ctx: RequestContext, scope: CacheScope, policy: caching.Policy, exact_print: str, question, vector,
          body: str) -> None:
    """Keep a generated answer (blocking; runs once the request is answered)."""
    attempt = ctx.attempts[-1] if ctx.attempts else None
    if attempt is None or attempt.status != UsageRecord.Status.OK or attempt.kind == UsageRecord.AttemptKind.CACHE_HIT:
        return
    if getattr(attempt.result, "finish_reason", None) not in ("stop", "length"):
        return
    if ctx.response_headers.get("X-Tollgate-Validation", "").startswith("failed"):
        return  # an answer that failed its checks (escalation ran out) is served once, never again
    model = attempt.option.model  # the model that answered: a downgraded answer is kept under its own model
    try:
        if policy.exact:
            caching.store_exact(scope, model, exact_print, body, policy.ttl_s)
        if question is not None:
            semantic.store(scope, model, question[0], question[1], vector, body, policy.ttl_s)
    except STORE_ERRORS as exc:  # the answer was served; not keeping it costs only a later miss
        logger.warning("cache store unavailable; the answer was not kept: %r", exc)
