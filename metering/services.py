"""Writing the usage ledger. Serving hands over a UsageDraft; metering owns the row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.db import transaction

from .models import UsageRecord
from .pricing import quantize_money


@dataclass
class UsageDraft:
    """Everything known about one attempt when it ends. Money fields are Decimal."""

    request_id: str
    org_id: int
    created_at: datetime
    model_requested: str
    feature: str = ""
    api_key_id: int | None = None
    user_id: int | None = None
    trace_id: str = ""
    endpoint: str = "chat.completions"
    model_served: str = ""
    pool: str = ""
    replica: str = ""
    attempt_kind: str = UsageRecord.AttemptKind.PRIMARY
    status: str = UsageRecord.Status.OK
    error_code: str = ""
    streamed: bool = False
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    tokens_saved: int = 0
    queue_wait_ms: float = 0.0
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    engine_seconds: float = 0.0
    cost_input: Decimal = Decimal(0)
    cost_output: Decimal = Decimal(0)
    cost_gpu: Decimal = Decimal(0)
    price_id: int | None = None
    cache_hit: bool = False
    downgraded: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def cost_total(self) -> Decimal:
        return quantize_money(self.cost_input + self.cost_output + self.cost_gpu)


def record_usage(draft: UsageDraft) -> UsageRecord:
    """Write one ledger row durably. Shipping to ClickHouse happens later, from the outbox."""
    with transaction.atomic():
        return UsageRecord.objects.create(
            request_id=draft.request_id,
            trace_id=draft.trace_id,
            created_at=draft.created_at,
            organization_id=draft.org_id,
            feature=draft.feature,
            api_key_id=draft.api_key_id,
            user_id=draft.user_id,
            endpoint=draft.endpoint,
            model_requested=draft.model_requested,
            model_served=draft.model_served,
            pool=draft.pool,
            replica=draft.replica,
            attempt_kind=draft.attempt_kind,
            status=draft.status,
            error_code=draft.error_code,
            streamed=draft.streamed,
            input_tokens=draft.input_tokens,
            cached_input_tokens=draft.cached_input_tokens,
            output_tokens=draft.output_tokens,
            tokens_saved=draft.tokens_saved,
            queue_wait_ms=draft.queue_wait_ms,
            ttft_ms=draft.ttft_ms,
            duration_ms=draft.duration_ms,
            engine_seconds=draft.engine_seconds,
            cost_input=draft.cost_input,
            cost_output=draft.cost_output,
            cost_gpu=draft.cost_gpu,
            cost_total=draft.cost_total,
            price_id=draft.price_id,
            cache_hit=draft.cache_hit,
            downgraded=draft.downgraded,
        )


arecord_usage = sync_to_async(record_usage)
