"""Three weeks of varied usage for one org, for pages that should look lived-in (screenshots, GPU and
routing charts): several features, models and keys, a rated pool, cache hits, routed requests and an
escalation. Written through metering's own record_usage, then shipped to ClickHouse by the caller."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal

import uuid6

from metering import pricing
from metering.models import UsageRecord
from metering.services import UsageDraft, record_usage

FEATURES = ("chat", "search", "summarize")
# (model, tier) as the catalog fixture has them.
MODELS = (("tollgate-mini", 1), ("tollgate-small", 2), ("tollgate-large", 3))


def showcase_attempt(org, at: datetime, *, model: str, feature: str, input_tokens: int, output_tokens: int,
                     pool: str = "interactive", engine_seconds: float = 0.4, queue_wait_ms: float = 0.0,
                     route_tier: int | None = None, route_reason: str = "", route_model: str = "",
                     discarded: bool = False, cache_hit: bool = False, api_key_id=None, user_id=None,
                     request_id: str | None = None, attempt_kind: str = UsageRecord.AttemptKind.PRIMARY) -> UsageRecord:
    entry = pricing.catalog_entry(model, at)
    cost = pricing.cost_of_tokens(entry, input_tokens=input_tokens, output_tokens=output_tokens)
    return record_usage(UsageDraft(
        request_id=request_id or uuid6.uuid7().hex, org_id=org.pk, created_at=at,
        model_requested="auto" if route_tier else model, model_served=model, feature=feature,
        pool="" if cache_hit else pool, engine_seconds=0.0 if cache_hit else engine_seconds,
        queue_wait_ms=queue_wait_ms, input_tokens=input_tokens, output_tokens=output_tokens,
        cost_input=Decimal(0) if cache_hit else cost.input, cost_output=Decimal(0) if cache_hit else cost.output,
        savings_cache=(cost.input + cost.output) if cache_hit else Decimal(0), cache_hit=cache_hit,
        cache_layer="exact" if cache_hit else "", price_id=entry.price_id, api_key_id=api_key_id, user_id=user_id,
        route_tier=route_tier, route_reason=route_reason, route_model=route_model, discarded=discarded,
        attempt_kind=attempt_kind, duration_ms=engine_seconds * 1000 + queue_wait_ms,
        ttft_ms=queue_wait_ms + 40.0,
    ))


def seed_showcase(org, now: datetime, *, days: int = 21, seed: int = 11, api_key_id=None, user_id=None) -> int:
    """About 15 requests a day over `days` days; returns how many attempts were written."""
    rng = random.Random(seed)
    written = 0
    for day in range(days, 0, -1):
        for _ in range(10 + rng.randrange(10)):
            at = now - timedelta(days=day, minutes=rng.randrange(24 * 60))
            feature = rng.choices(FEATURES, weights=(5, 3, 2))[0]
            model, tier = rng.choices(MODELS, weights=(6, 3, 1))[0]
            routed = rng.random() < 0.5
            common = dict(feature=feature, input_tokens=rng.randrange(200, 4000), output_tokens=rng.randrange(20, 600),
                          engine_seconds=round(rng.uniform(2.0, 40.0) * tier, 3),
                          queue_wait_ms=round(rng.expovariate(1 / 30), 1), api_key_id=api_key_id, user_id=user_id)
            if routed and tier < 3 and rng.random() < 0.1:
                # Escalated: the weaker answer was thrown away for the next tier's.
                request_id = uuid6.uuid7().hex
                weaker, weaker_tier = MODELS[tier - 1]
                stronger, _ = MODELS[tier]
                showcase_attempt(org, at, model=weaker, route_tier=weaker_tier, route_reason="classifier",
                                 route_model=weaker, discarded=True, request_id=request_id, **common)
                # Both attempts carry the request's one routing decision (the weaker tier).
                showcase_attempt(org, at + timedelta(seconds=2), model=stronger, route_tier=weaker_tier,
                                 route_reason="classifier", route_model=weaker, request_id=request_id,
                                 attempt_kind=UsageRecord.AttemptKind.ESCALATION, **common)
                written += 2
                continue
            hit = rng.random() < 0.15
            showcase_attempt(org, at, model=model, route_tier=tier if routed else None,
                             route_reason=rng.choice(("classifier", "low_confidence")) if routed else "",
                             route_model=model if routed else "", cache_hit=hit, **common,
                             attempt_kind=UsageRecord.AttemptKind.CACHE_HIT if hit else UsageRecord.AttemptKind.PRIMARY)
            written += 1
    return written
