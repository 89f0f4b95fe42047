"""The request context that passes through the flow's stages, and what it carries between them.

Plain data: who the request is billed to (a ``TenantContext``), the parsed
request (a wire type from ``serving.protocol``), and what each stage decided
(the route, the reservation, the attempts). Nothing here is HTTP-shaped, so
the same context can come from the /v1 edge, a Celery task or a test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uuid6
from django.conf import settings
from django.utils import timezone
from opentelemetry import trace

from budgets.services import CostEstimate, Reservation
from budgets.settlement import SettledUsage
from metering.models import UsageRecord
from routing.services import RouteDecision
from tenants.services import TenantContext

from ..engines.base import ChatMessage, GenerationResult, GenerationStream
from ..protocol import ChatCompletionRequest, EmbeddingRequest, TextCompletionRequest
from ..validation import Checks

CHAT = "chat.completions"
COMPLETIONS = "completions"
GENERATION_KINDS = (UsageRecord.AttemptKind.PRIMARY, UsageRecord.AttemptKind.RETRY,
                    UsageRecord.AttemptKind.ESCALATION)
EMBEDDINGS = "embeddings"


def new_request_id() -> str:
    return uuid6.uuid7().hex


@dataclass(frozen=True)
class RouteOption:
    """One way to serve the request: a priced catalog entry with its token counts, and the engine behind it."""

    estimate: CostEstimate
    engine: Any  # an engines.base.Engine, or an embedding deployment (pools.DeploymentRuntime) for /v1/embeddings

    @property
    def model(self) -> str:
        return self.estimate.entry.name


@dataclass(frozen=True)
class Route:
    """The routing decision, made once, before the budget is touched.

    ``alternatives`` are the cheaper options a downgrade budget may choose
    instead (cheapest first), each already priced, so the budget decides
    under its locks without calling back into serving.
    """

    primary: RouteOption
    alternatives: tuple[RouteOption, ...] = ()
    # Why the primary was chosen (chat only): recorded on the span and the usage rows.
    decision: RouteDecision | None = None

    def option_for(self, model: str) -> RouteOption:
        for option in (self.primary, *self.alternatives):
            if option.model == model:
                return option
        raise LookupError(f"{model} is not on this route")


@dataclass
class Attempt:
    """One try at answering: a usage row of its own when the request settles."""

    option: RouteOption
    kind: str = UsageRecord.AttemptKind.PRIMARY
    retry: int = 0  # 0 for the request's first try, 1.. for its retries
    started: float = field(default_factory=time.perf_counter)
    stream: GenerationStream | None = None
    result: GenerationResult | Any | None = None  # GenerationResult, or an EmbeddingResult
    status: str = UsageRecord.Status.OK
    error_code: str = ""
    finished: float | None = None
    pool: str = ""
    replica: str = ""
    queue_wait_s: float = 0.0
    span: trace.Span | None = None
    discarded: bool = False  # its answer failed validation and a stronger model's replaced it

    @property
    def duration_s(self) -> float:
        return (self.finished or time.perf_counter()) - self.started


@dataclass
class RequestContext:
    """One request on its way through the flow."""

    tenant: TenantContext
    request: ChatCompletionRequest | EmbeddingRequest | TextCompletionRequest
    endpoint: str = CHAT
    request_id: str = field(default_factory=new_request_id)
    received_at: datetime = field(default_factory=timezone.now)
    # X-Quality: high, or the same wish from a batch line: never serve a cheaper model than asked for.
    quality_high: bool = False
    # The span the flow's spans hang under (the edge's server span); the flow opens one when there is none.
    span: trace.Span | None = None
    # The chat messages as the engines take them (converted once, by the route stage).
    messages: tuple[ChatMessage, ...] = ()
    route: Route | None = None
    reservation: Reservation | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # Set when a stage refused the request after it was known (budget): the code of its ledger row.
    refusal_code: str = ""
    settled: SettledUsage | None = None
    settling: bool = False
    # The caller's Idempotency-Key, if any (serving/stages/idempotency.py).
    idempotency_key: str | None = None
    # The caller's Cache-Control request header, if any (the cache honours no-store, no-cache, max-age).
    cache_control: str | None = None
    # Headers stages add to the answer (rate-limit state, cache status, routing), whatever the answer is.
    response_headers: dict[str, str] = field(default_factory=dict)
    # How long the generation may run (X-Tollgate-Timeout, capped by the setting), and whether the caller
    # takes what was generated by then (X-Tollgate-Partial: allow). The generate stage sets the deadline.
    timeout_s: float = field(default_factory=lambda: settings.TOLLGATE_GENERATION_TIMEOUT_S)
    partial_allowed: bool = False
    deadline: float = float("inf")  # time.monotonic()
    max_attempts: int = field(default_factory=lambda: max(1, settings.TOLLGATE_RETRY_MAX_ATTEMPTS))
    # Token optimization (serving/stages/optimize_tokens.py): the steps the caller allows (None: whatever
    # the policy runs), and what each step that ran saved (recorded on the answering attempt's usage row).
    token_steps: frozenset[str] | None = None
    token_savings: list = field(default_factory=list)
    # Validation and escalation (serving/stages/escalate.py): the checks the answer must pass (the route
    # stage sets them from the policy and the request), how many escalations the policy allows, and the
    # stronger option the request was escalated to, if any.
    checks: Checks = field(default_factory=Checks)
    escalation_limit: int = 0
    escalated_to: RouteOption | None = None
    # Set when the request is a line of a batch (the batches app): its usage rows carry the batch's id and
    # its tokens are billed at the price book's batch discount.
    batch_id: str = ""

    @property
    def tries(self) -> list[Attempt]:
        """The attempts that tried to generate the answer (not a history summary)."""
        return [a for a in self.attempts if a.kind in GENERATION_KINDS]
    # Set by a stage that already has the answer (an idempotent replay): the flow runs no further stage.
    replay: Any = None
    # Set by the cache stage on a hit (a caching.services.CachedAnswer, its attempt already added): the flow
    # runs no further stage, settles the cache-hit attempt and answers from it.
    cache_hit: Any = None
    # Blocking callbacks once the request is answered (with the response body as sent and its headers),
    # or once it failed; stages that keep something about the request (idempotency keys) add them.
    on_answered: list[Callable[[str, dict[str, str]], None]] = field(default_factory=list)
    on_failed: list[Callable[[], None]] = field(default_factory=list)

    @property
    def answered_early(self) -> bool:
        """Whether a stage already has the answer (a replay or a cache hit), so no further stage runs."""
        return self.replay is not None or self.cache_hit is not None

    @property
    def served(self) -> RouteOption:
        """The option the request is served on: an escalation's, the route's, or the budget's downgrade."""
        if self.escalated_to is not None:
            return self.escalated_to
        if self.reservation is not None and self.reservation.downgraded:
            # The budget's estimate, which may also cap the output (downgrade_max_tokens).
            estimate = self.reservation.estimate
            return RouteOption(estimate, self.route.option_for(estimate.entry.name).engine)
        return self.route.primary

    @property
    def trace_id(self) -> str:
        """The request's trace id, for its ledger row; "" when its trace is not kept (sampled out by
        OTEL_TRACES_SAMPLER, or tracing off), since an id no trace store holds is only a dead end."""
        context = (self.span or trace.get_current_span()).get_span_context()
        if not (context.is_valid and context.trace_flags.sampled):
            return ""
        return format(context.trace_id, "032x")
