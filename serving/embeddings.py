"""Embeddings: the request flow from key to settled cost for POST /v1/embeddings.

Auth, catalog price and budget reservation as for chat; then the embedding
pool's admission queue, a replica (the in-process all-MiniLM-L6-v2 batcher or
a worker's /v1/embeddings) and one ledger row with ``endpoint="embeddings"``,
billed per input token.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db import transaction
from django.utils import timezone

from budgets import services as budgets
from metering import pricing
from metering.models import UsageRecord
from metering.services import UsageDraft, record_usage
from tenants import services as tenants

from . import errors
from .chat import authenticate, on_thread_pool
from .engines.base import EngineError, EngineUnavailable
from .pools import DeploymentRuntime, PoolQueueFull, choose_replica, deployment_for_model
from .protocol import parse_json_body

MAX_INPUTS = 2048


@dataclass(frozen=True)
class EmbeddingsBody:
    model: str
    texts: list[str]
    encoding_format: str


@dataclass
class PreparedEmbeddings:
    request_id: str
    received_at: datetime
    tenant: tenants.TenantContext
    body: EmbeddingsBody
    entry: pricing.CatalogEntry
    deployment: DeploymentRuntime
    reservation: budgets.Reservation | None


def parse_embeddings(body: dict) -> EmbeddingsBody:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.InvalidRequest("You must provide a model parameter.", param="model",
                                    code="missing_required_parameter")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise errors.InvalidRequest("'input' must be a non-empty string or an array of non-empty strings.",
                                    param="input", code="invalid_value")
    if len(texts) > MAX_INPUTS:
        raise errors.InvalidRequest(f"'input' may hold at most {MAX_INPUTS} strings.", param="input",
                                    code="invalid_value")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise errors.InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format",
                                    code="invalid_value")
    if body.get("dimensions") not in (None, 384):
        raise errors.InvalidRequest("This model returns 384 dimensions only.", param="dimensions",
                                    code="invalid_value")
    return EmbeddingsBody(model=model, texts=texts, encoding_format=encoding)


def prepare_embeddings(request_id: str, authorization: str | None, feature: str | None,
                       raw_body: bytes) -> PreparedEmbeddings:
    received_at = timezone.now()
    tenant = authenticate(authorization, feature)
    body = parse_embeddings(parse_json_body(raw_body))
    try:
        entry = pricing.catalog_entry(body.model, received_at)
    except pricing.UnknownModel as exc:
        raise errors.ModelNotFound(str(exc), param="model")
    deployment = deployment_for_model(entry.name)
    if deployment is None or deployment.pool.config.kind != "embedding":
        raise errors.ModelNotFound(f"The model `{entry.name}` does not serve embeddings.", param="model")
    embedder = deployment.replicas[0].engine
    input_tokens = embedder.count_tokens(body.texts) if hasattr(embedder, "count_tokens") else 0
    try:
        reservation = budgets.reserve_budget(
            request_id, tenant.org_id, tenant.feature_id, tenant.api_key_id, tenant.user_id,
            budgets.CostEstimate(entry, input_tokens, 0), received_at,
        )
    except budgets.BudgetExceeded as exc:
        record_usage(UsageDraft(
            request_id=request_id, org_id=tenant.org_id, created_at=received_at, model_requested=body.model,
            feature=tenant.feature_slug, api_key_id=tenant.api_key_id, user_id=tenant.user_id,
            endpoint="embeddings", status=UsageRecord.Status.REFUSED, error_code="budget_exceeded",
            price_id=entry.price_id,
        ))
        seconds = max(0, int((exc.status.period_end - timezone.now()).total_seconds()))
        raise errors.BudgetExceeded(str(exc), headers={"Retry-After": str(seconds)})
    return PreparedEmbeddings(request_id=request_id, received_at=received_at, tenant=tenant, body=body,
                              entry=entry, deployment=deployment, reservation=reservation)


aprepare_embeddings = on_thread_pool(prepare_embeddings)


def settle_embeddings(prepared: PreparedEmbeddings, result, *, status: str, replica: str, queue_wait_s: float,
                      duration_s: float, error_code: str = "") -> UsageDraft:
    draft = UsageDraft(
        request_id=prepared.request_id, org_id=prepared.tenant.org_id, created_at=prepared.received_at,
        model_requested=prepared.body.model, model_served=prepared.entry.name, feature=prepared.tenant.feature_slug,
        api_key_id=prepared.tenant.api_key_id, user_id=prepared.tenant.user_id, endpoint="embeddings",
        pool=prepared.deployment.pool.name, replica=replica, status=status, error_code=error_code,
        duration_ms=duration_s * 1000.0, queue_wait_ms=queue_wait_s * 1000.0, price_id=prepared.entry.price_id,
    )
    if result is not None:
        draft.input_tokens = result.prompt_tokens
        draft.engine_seconds = result.engine_seconds
        draft.queue_wait_ms += result.queue_seconds * 1000.0
        draft.cost_input = pricing.cost_of_tokens(prepared.entry, input_tokens=result.prompt_tokens,
                                                  output_tokens=0).input
    with transaction.atomic():
        record = record_usage(draft)
        if status == UsageRecord.Status.OK:
            budgets.settle_reservation(prepared.reservation, record.cost_total)
        else:
            budgets.release_reservation(prepared.reservation)
    return draft


asettle_embeddings = on_thread_pool(settle_embeddings)


async def create_embeddings(prepared: PreparedEmbeddings) -> tuple[dict, UsageDraft]:
    """Admit to the embedding pool, embed on a replica (failing over a dead one), settle, return the body."""
    started = time.perf_counter()
    pool = prepared.deployment.pool
    try:
        waited = await pool.admit_request()
    except PoolQueueFull as exc:
        await on_thread_pool(budgets.release_reservation)(prepared.reservation)
        raise errors.QueueFull(str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    admitted = time.perf_counter()
    tried: set[str] = set()
    replica = None
    try:
        while True:
            replica = choose_replica(prepared.deployment.replicas, "", tried)
            if replica is None:
                raise EngineUnavailable("no embedding replica can take the request")
            replica.outstanding += 1
            try:
                result = await replica.engine.embed(prepared.body.texts)
                break
            except EngineUnavailable as exc:
                replica.mark_down(str(exc))
                tried.add(replica.label)
            finally:
                replica.outstanding -= 1
    except EngineError as exc:
        await asettle_embeddings(prepared, None, status=UsageRecord.Status.ERROR, error_code="engine_error",
                                 replica=replica.label if replica else "", queue_wait_s=waited,
                                 duration_s=time.perf_counter() - started)
        raise errors.EngineUnavailable(f"The embedding model is unavailable: {exc}")
    finally:
        pool.release(time.perf_counter() - admitted)
    draft = await asettle_embeddings(prepared, result, status=UsageRecord.Status.OK, replica=replica.label,
                                     queue_wait_s=waited, duration_s=time.perf_counter() - started)
    return embeddings_response(prepared, result), draft


def embeddings_response(prepared: PreparedEmbeddings, result) -> dict:
    def encode(vector):
        if prepared.body.encoding_format == "base64":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        return vector

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)],
        "model": prepared.entry.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def embedding_attributes(draft: UsageDraft) -> dict:
    return {
        "gen_ai.request.model": draft.model_requested, "gen_ai.response.model": draft.model_served,
        "gen_ai.usage.input_tokens": draft.input_tokens, "tollgate.org_id": draft.org_id,
        "tollgate.feature": draft.feature, "tollgate.pool": draft.pool, "tollgate.replica": draft.replica,
        "tollgate.queue_wait_ms": draft.queue_wait_ms, "tollgate.engine_seconds": draft.engine_seconds,
        "tollgate.cost.input": str(draft.cost_input), "tollgate.cost.total": str(draft.cost_total),
    }
