"""Optimize tokens: send the engine the same request in fewer input tokens (serving/optimization.py).

Runs before ``route``, so the route counts and prices the optimized prompt.
The steps, in order: drop duplicate system prompts, compact tool outputs,
keep the context paragraphs most relevant to the question, summarize old
history; then OpenAI's ``verbosity`` (``low`` asks for a concise answer).
Which steps run: the org's or feature's routing policy (Django admin), or
``TOLLGATE_TOKEN_OPTIMIZATION`` (all by default) where it has none; a request
may switch steps off with the ``X-Tollgate-Optimize`` header (``off``, or the
steps to keep, comma separated). Tokens before and after each step go on the span; the
total saved goes on the answering attempt's usage row (``tokens_saved``, and
``savings_tokens`` at the served model's input price).

The history summary is written by the cheapest served model, as an attempt
of kind ``summary`` (billed: it is what the saving costs), and kept in
Django's cache per org and conversation prefix, so the next turn of the same
conversation reuses it for nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.core.cache import cache
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from budgets import services as budgets
from routing import services as routing
from core.threads import on_thread_pool
from metering.models import UsageRecord
from metering.tracing import tracer

from .. import errors, optimization
from ..engines.base import ChatMessage, EngineError, GenerationRequest, SamplingParams
from ..flow.context import CHAT, Attempt, RequestContext, RouteOption
from ..pools import engine_for_model, open_generation

STEPS = ("dedupe", "tools", "context", "history")
HEADER = "X-Tollgate-Optimize"
SUMMARY_INSTRUCTION = ("Summarize the conversation below in a few short sentences: the facts, decisions and open "
                       "questions a reader needs to continue it.")
SUMMARY_CACHE_PREFIX = "tollgate:summary:"


@dataclass(frozen=True)
class TokenPolicy:
    steps: frozenset[str]
    context_budget: int
    history_budget: int
    tool_field_chars: int
    summary_tokens: int


def default_policy() -> TokenPolicy:
    """For an org and feature with no routing policy: the settings."""
    return TokenPolicy(steps=parse_steps(settings.TOLLGATE_TOKEN_OPTIMIZATION, param="TOLLGATE_TOKEN_OPTIMIZATION"),
                       context_budget=settings.TOLLGATE_CONTEXT_BUDGET_TOKENS,
                       history_budget=settings.TOLLGATE_HISTORY_BUDGET_TOKENS,
                       tool_field_chars=settings.TOLLGATE_TOOL_OUTPUT_FIELD_CHARS,
                       summary_tokens=settings.TOLLGATE_SUMMARY_MAX_TOKENS)


def token_policy(org_id: int, feature_id: int | None, policy: routing.Policy | None = None) -> TokenPolicy:
    """The steps and budgets an org's (or feature's) routing policy sets, set in Django admin; the settings
    where it has none. An empty budget in a policy switches its step off."""
    policy = policy or routing.policy_for(org_id, feature_id)
    if policy.policy_id is None:
        return default_policy()
    steps = {name for name, on in (("dedupe", policy.dedupe_system_prompts), ("tools", policy.compact_tool_output),
                                   ("context", policy.context_token_budget), ("history", policy.history_token_budget))
             if on}
    return TokenPolicy(steps=frozenset(steps), context_budget=policy.context_token_budget or 0,
                       history_budget=policy.history_token_budget or 0,
                       tool_field_chars=settings.TOLLGATE_TOOL_OUTPUT_FIELD_CHARS,
                       summary_tokens=settings.TOLLGATE_SUMMARY_MAX_TOKENS)


def parse_steps(value: str, *, param: str = HEADER) -> frozenset[str]:
    """``off``, ``on`` / ``all``, or a comma-separated list of steps; anything else is a 400 naming it."""
    value = value.strip().lower()
    if value in ("off", "none", ""):
        return frozenset()
    if value in ("on", "all"):
        return frozenset(STEPS)
    steps = {s.strip() for s in value.split(",") if s.strip()}
    unknown = sorted(steps - set(STEPS))
    if unknown:
        raise errors.InvalidRequest(f"{param} takes `off`, `on` or steps among {', '.join(STEPS)}; "
                                    f"`{unknown[0]}` is not one.", param=param, code="invalid_header")
    return frozenset(steps)


def count_tokens(messages: tuple[ChatMessage, ...]) -> int:
    # The gateway's one prompt counter (the route stage counts with the same tokenizer for every engine).
    from ..engines.cpu.tokenizer import get_tokenizer

    return get_tokenizer().count_chat(messages)


async def embed_texts(texts: list[str]) -> np.ndarray:
    from ..engines.embeddings import get_embedder  # torch: loaded only when context selection needs it

    return np.asarray((await get_embedder().embed(texts)).vectors, dtype=np.float32)


def may_save(messages: tuple[ChatMessage, ...], policy: TokenPolicy) -> bool:
    """Whether any step could shrink these messages, judged without the tokenizer (most requests cannot:
    they then cost no thread hop and no token count). A prompt's token count is at most its characters plus
    a few per message (every token holds at least one character), so a short prompt fits every budget."""
    steps = policy.steps
    system = [" ".join(m.content.split()) for m in messages if m.role in optimization.SYSTEM_ROLES]
    if "dedupe" in steps and len(set(system)) < len(system):
        return True
    if "tools" in steps and any(m.role == "tool" and m.content.lstrip()[:1] in ("{", "[") for m in messages):
        return True
    most_tokens = sum(len(m.content) + len(m.role) + 4 for m in messages) + 8
    return (("context" in steps and most_tokens > policy.context_budget)
            or ("history" in steps and most_tokens > policy.history_budget))


def _callers_policy(ctx: RequestContext, policy: TokenPolicy) -> TokenPolicy:
    if ctx.token_steps is not None:  # the caller's X-Tollgate-Optimize may switch steps off, never on
        policy = dataclasses.replace(policy, steps=policy.steps & ctx.token_steps)
    return policy


def run_in_memory(ctx: RequestContext) -> bool:
    """Finish the stage without I/O where no step could save anything (most requests) and the policy is
    memoized; False, having changed nothing, when it needs ``run``. Never blocks (the flow calls it on the
    event loop or on the thread of the stage before it)."""
    if ctx.endpoint != CHAT:
        return True
    tenant = ctx.tenant
    memoized = routing.memoized_policy(tenant.org_id, tenant.feature_id)
    if memoized is None:
        return False
    messages = ctx.request.to_chat_messages()
    if may_save(messages, _callers_policy(ctx, token_policy(tenant.org_id, tenant.feature_id, memoized))):
        return False
    ctx.messages = optimization.with_verbosity(messages, ctx.request.verbosity)
    return True


async def run(ctx: RequestContext) -> None:
    if ctx.endpoint != CHAT:
        return
    tenant = ctx.tenant
    memoized = routing.memoized_policy(tenant.org_id, tenant.feature_id)
    policy = _callers_policy(ctx, token_policy(tenant.org_id, tenant.feature_id, memoized) if memoized is not None
                             else await on_thread_pool(token_policy)(tenant.org_id, tenant.feature_id))
    messages = ctx.request.to_chat_messages()
    if not may_save(messages, policy):
        ctx.messages = optimization.with_verbosity(messages, ctx.request.verbosity)
        return
    plan = await on_thread_pool(_lossless_steps)(messages, policy)
    if "context" in policy.steps and plan.tokens > policy.context_budget:
        chunks = optimization.context_chunks(plan.messages)
        if len(chunks) >= 2:
            similarity = optimization.cosine_to_question(
                await embed_texts([optimization.question(plan.messages)] + [text for _, text in chunks]))
            await on_thread_pool(plan.apply)("context", lambda m: optimization.select_context(
                m, policy.context_budget, count_tokens, similarity))
    if "history" in policy.steps:
        split = await on_thread_pool(optimization.split_history)(plan.messages, policy.history_budget,
                                                                 count_tokens, policy.summary_tokens)
        if split is not None:
            summary = await _summary(ctx, split.summarized, policy)
            if summary is not None:
                await on_thread_pool(plan.apply)("history", lambda _: split.with_summary(summary))
    ctx.messages = optimization.with_verbosity(plan.messages, ctx.request.verbosity)
    ctx.token_savings = plan.steps
    if plan.steps and ctx.span is not None:
        for step in plan.steps:
            ctx.span.set_attribute(f"tollgate.tokens.{step.step}.before", step.tokens_before)
            ctx.span.set_attribute(f"tollgate.tokens.{step.step}.after", step.tokens_after)


@dataclass
class _Plan:
    """The messages as optimized so far, their token count, and what each step that ran saved."""

    messages: tuple[ChatMessage, ...]
    tokens: int
    steps: list[optimization.StepSaving] = field(default_factory=list)

    def apply(self, name: str, transform) -> None:
        """Keep a step's result only when it saved tokens (blocking: it counts them)."""
        changed = transform(self.messages)
        if changed == self.messages:
            return
        after = count_tokens(changed)
        if after < self.tokens:
            self.steps.append(optimization.StepSaving(name, self.tokens, after))
            self.messages, self.tokens = changed, after


def _lossless_steps(messages: tuple[ChatMessage, ...], policy: TokenPolicy) -> _Plan:
    """Duplicate system prompts and tool-output compaction: nothing the model needs is lost."""
    plan = _Plan(messages, count_tokens(messages))
    if "dedupe" in policy.steps:
        plan.apply("dedupe", optimization.drop_duplicate_system_prompts)
    if "tools" in policy.steps:
        plan.apply("tools", lambda m: optimization.compact_tool_outputs(m, policy.tool_field_chars))
    return plan


def _summary_key(org_id: int, model: str, messages: tuple[ChatMessage, ...]) -> str:
    payload = json.dumps([org_id, model, [(m.role, m.name, m.content) for m in messages]], ensure_ascii=False)
    return SUMMARY_CACHE_PREFIX + hashlib.sha256(payload.encode()).hexdigest()


def _summarizer(ctx: RequestContext) -> RouteOption | None:
    """The cheapest served model, priced for a summary (the request's tenant pays for it)."""
    for entry in budgets.downgrade_candidates(ctx.received_at):
        engine = engine_for_model(entry.name)
        if engine is not None:
            return RouteOption(budgets.CostEstimate(entry, 0, 0), engine)
    return None


async def _summary(ctx: RequestContext, turns: tuple[ChatMessage, ...], policy: TokenPolicy) -> str | None:
    """The summary of ``turns``: from the cache, or written now by the cheapest model (an attempt)."""
    option = await on_thread_pool(_summarizer)(ctx)
    if option is None:
        return None
    key = _summary_key(ctx.tenant.org_id, option.model, turns)
    cached = await on_thread_pool(cache.get)(key)
    if cached is not None:
        return cached
    transcript = "\n".join(f"{m.role}: {m.content}" for m in turns)
    request = GenerationRequest(
        request_id=f"{ctx.request_id}-summary", model=option.model,
        messages=(ChatMessage("system", SUMMARY_INSTRUCTION), ChatMessage("user", transcript)),
        sampling=SamplingParams(max_tokens=policy.summary_tokens, temperature=0.0, top_p=1.0))
    attempt = Attempt(option=option, kind=UsageRecord.AttemptKind.SUMMARY, span=tracer.start_span(
        f"summary {option.model}", kind=SpanKind.CLIENT, context=trace.set_span_in_context(ctx.span)))
    try:
        attempt.stream = await open_generation(option.engine, request)
    except EngineError:  # no summary is no failure (a full pool, say): the request goes on unsummarized
        attempt.span.end()
        return None
    ctx.attempts.append(attempt)
    try:
        text = "".join([delta.text async for delta in attempt.stream])
    except EngineError:
        attempt.status, attempt.error_code = UsageRecord.Status.ERROR, "summary_failed"
        attempt.result = attempt.stream.result
        return None
    attempt.result = attempt.stream.result
    await on_thread_pool(cache.set)(key, text, settings.TOLLGATE_SUMMARY_CACHE_TTL_S)
    return text
