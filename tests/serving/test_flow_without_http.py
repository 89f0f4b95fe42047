"""The request flow served with no HTTP at all, as a Celery task or a management command calls it:
a tenant context and a parsed request in, a result and exactly one settlement out."""

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from budgets.models import Budget, BudgetCounter, BudgetReservation
from metering.models import UsageRecord
from serving import errors
from serving.flow.context import RequestContext
from serving.flow.pipeline import serve_chat_blocking, serve_embeddings_blocking
from serving.protocol import ChatCompletionRequest, EmbeddingRequest
from tenants.services import authenticate_api_key

pytestmark = pytest.mark.django_db(transaction=True)


def tenant_context(tenant):
    # What a batch worker holds for a line: the key's tenant, resolved once, no Authorization header.
    return authenticate_api_key(f"Bearer {tenant.plaintext}")


def in_worker_thread(fn, *args):
    """Run ``fn`` the way a Celery worker runs a task: synchronous code on a thread with no event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=120)


def test_chat_flow_without_http_answers_and_settles_exactly_once(tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("5"))
    request = ChatCompletionRequest(model="tollgate-mini", messages=[{"role": "user", "content": "Hello there"}],
                                    max_tokens=5, temperature=0)
    ctx = RequestContext(tenant=tenant_context(tenant), request=request)

    response = in_worker_thread(serve_chat_blocking, ctx)

    assert response.object == "chat.completion" and response.model == "tollgate-mini"
    assert response.id == f"chatcmpl-{ctx.request_id}"
    assert response.usage.completion_tokens == 5
    row = UsageRecord.objects.get()
    assert row.request_id == ctx.request_id and row.endpoint == "chat.completions"
    assert row.status == UsageRecord.Status.OK and row.attempt_kind == UsageRecord.AttemptKind.PRIMARY
    assert row.output_tokens == 5 and row.cost_total > 0
    assert ctx.settled.cost == row.cost_total
    # The reservation became the real cost, once: nothing is still held.
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.spent == row.cost_total and counter.reserved == 0
    assert not BudgetReservation.objects.exists()


def test_embeddings_flow_without_http_settles_one_row(tenant):
    request = EmbeddingRequest(model="all-minilm-l6-v2", input=["first text", "second text"])
    ctx = RequestContext(tenant=tenant_context(tenant), request=request)

    response = in_worker_thread(serve_embeddings_blocking, ctx)

    assert [d.index for d in response.data] == [0, 1] and len(response.data[0].embedding) == 384
    row = UsageRecord.objects.get()
    assert row.endpoint == "embeddings" and row.input_tokens == response.usage.prompt_tokens > 0
    assert row.cost_total == ctx.settled.cost


def test_a_refused_request_without_http_records_its_refusal_and_holds_nothing(tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("0"))
    request = ChatCompletionRequest(model="tollgate-mini", messages=[{"role": "user", "content": "Hello"}])
    ctx = RequestContext(tenant=tenant_context(tenant), request=request)

    with pytest.raises(errors.BudgetExceeded):
        in_worker_thread(serve_chat_blocking, ctx)

    row = UsageRecord.objects.get()
    assert row.status == UsageRecord.Status.REFUSED and row.error_code == "budget_exceeded"
    assert row.cost_total == 0
    assert not BudgetReservation.objects.exists()
    assert BudgetCounter.objects.get().reserved == 0
