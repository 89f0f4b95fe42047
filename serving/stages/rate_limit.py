"""Rate limit: the key's and the org's requests and tokens per minute, first, so a refused request costs nothing.

First in the flow (before idempotency, routing and the budget hold): a refused request holds no budget,
reaches no engine and leaves no usage row; it gets 429 ``rate_limit_exceeded`` with ``Retry-After``.
Every answer, 200 or 429, carries OpenAI's ``x-ratelimit-*`` headers for the limits that apply
(serving/ratelimits.py says which one is reported when the key and the org both have one).

Tokens are counted when the request arrives, before the model's tokenizer has seen it: a quarter of the
characters of the messages (OpenAI's rule of thumb for English), plus a few per message for the chat
format, plus the output the request may produce (its max_tokens, or TOLLGATE_DEFAULT_MAX_TOKENS). That
count stands: a request that produced fewer tokens than it could is not refunded, and one whose prompt
tokenized to more than the estimate is not charged again (docs/operations.md). Embeddings count their
input alone.

On the event loop without a thread: in memory when no limit applies or no Redis is configured, else the
admission script on Redis's asyncio client (``run_async``). ``run`` (blocking) is the same for callers
on a thread.
"""

from __future__ import annotations

import math

from django.conf import settings

from .. import errors, ratelimits
from ..flow.context import EMBEDDINGS, RequestContext
from ..protocol import ChatCompletionRequest

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators in the chat format


def estimated_tokens(ctx: RequestContext) -> int:
    request = ctx.request
    if ctx.endpoint == EMBEDDINGS:
        return sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in request.texts)
    assert isinstance(request, ChatCompletionRequest)
    prompt = sum(math.ceil(len(m.text) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE for m in request.messages)
    output = request.max_output_tokens
    return prompt + (output if output is not None else settings.TOLLGATE_DEFAULT_MAX_TOKENS)


def run_in_memory(ctx: RequestContext) -> bool:
    """Done without I/O for a request under no limit at all, or counted in this process (no Redis); False
    when the limits need the store."""
    limits = ratelimits.limits_for(ctx.tenant)
    if not limits:
        return True
    if not ratelimits.admits_in_memory():
        return False
    _apply(ctx, ratelimits.admit(limits, estimated_tokens(ctx)))
    return True


async def run_async(ctx: RequestContext) -> bool:
    _apply(ctx, await ratelimits.aadmit(ratelimits.limits_for(ctx.tenant), estimated_tokens(ctx)))
    return True


def run(ctx: RequestContext) -> None:
    limits = ratelimits.limits_for(ctx.tenant)
    if not limits:
        return
    _apply(ctx, ratelimits.admit(limits, estimated_tokens(ctx)))


def _apply(ctx: RequestContext, decision: ratelimits.Decision) -> None:
    """The decision's headers on the answer; a refusal raised as 429."""
    headers = ratelimits.headers(decision)
    ctx.response_headers.update(headers)
    if decision.admitted:
        return
    limit = decision.refused_by
    owner = f"API key {ctx.tenant.api_key_prefix}…" if limit.scope == "key" else f"organization {ctx.tenant.org_slug}"
    short = "RPM" if limit.kind == ratelimits.REQUESTS else "TPM"
    if limit.per_minute == 0:
        message = f"{owner[0].upper()}{owner[1:]} may send no {limit.kind} at all (its {short} limit is 0)."
    elif decision.retry_after_ms < 0:
        message = (f"Request too large for {owner} on {limit.kind} per min ({short}): Limit {limit.per_minute}, "
                   f"Requested {decision.cost}. Send fewer tokens (a smaller prompt or max_tokens).")
    else:
        message = (f"Rate limit reached for {owner} on {limit.kind} per min ({short}): Limit {limit.per_minute}, "
                   f"Requested {decision.cost}. Please try again in "
                   f"{ratelimits.format_duration(decision.retry_after_ms)}.")
    if ctx.span is not None:
        ctx.span.set_attribute("tollgate.rate_limited", f"{limit.scope}:{limit.kind}")
    raise errors.RateLimitExceeded(message, kind=limit.kind,
                                   headers={**headers, "Retry-After": str(decision.retry_after_s)})
