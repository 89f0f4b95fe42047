"""Ledger rows written through metering's own record_usage, for tests that need many or old ones."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import uuid6

from metering import pricing
from metering.models import UsageRecord
from metering.services import UsageDraft, record_usage


def record_attempt(org, at: datetime, *, model: str = "tollgate-mini", feature: str = "chat", input_tokens: int = 100,
                   output_tokens: int = 50, pool: str = "", engine_seconds: float = 0.0,
                   status: str = UsageRecord.Status.OK, discarded: bool = False, api_key_id=None,
                   user_id=None, **fields) -> UsageRecord:
    """One attempt priced from the catalog; `fields` sets any other UsageDraft field (queue_wait_ms, route_*)."""
    entry = pricing.catalog_entry(model, at)
    cost = pricing.cost_of_tokens(entry, input_tokens=input_tokens, output_tokens=output_tokens)
    return record_usage(UsageDraft(**{
        "request_id": uuid6.uuid7().hex, "org_id": org.pk, "created_at": at, "model_requested": model,
        "model_served": model, "feature": feature, "pool": pool, "engine_seconds": engine_seconds, "status": status,
        "discarded": discarded, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cost_input": cost.input, "cost_output": cost.output, "price_id": entry.price_id, "api_key_id": api_key_id,
        "user_id": user_id, **fields,
    }))


def ledger_total(**filters) -> Decimal:
    return sum((r.cost_total for r in UsageRecord.objects.filter(**filters)), Decimal(0))
