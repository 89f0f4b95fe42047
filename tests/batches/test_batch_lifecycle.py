"""The Batch API end to end with the official openai client over real HTTP: upload, create, poll, download.

Lines run through the request flow with no HTTP (routed, budget-checked, billed at the price book's batch
discount, attributed with the batch id), in a background thread of the web process (no broker here)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.conf import settings

from budgets.models import Budget
from metering.models import Price, UsageRecord

from .conftest import chat_line, results, run_batch, wait_for_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle_batches")]


def money(amount: Decimal) -> Decimal:
    return amount.quantize(settings.MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def test_a_batch_completes_and_every_custom_id_is_answered_once_in_the_output_file(openai_client):
    lines = [chat_line(f"req-{i}", f"Tell me about number {i}.") for i in range(5)]
    created = run_batch(openai_client, lines)
    assert created.status in ("validating", "in_progress") and created.request_counts.total == 5

    batch = wait_for_end(openai_client, created.id)

    assert batch.status == "completed" and batch.error_file_id is None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 5, 0)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    answers = results(openai_client, batch.output_file_id)
    assert set(answers) == {f"req-{i}" for i in range(5)}
    for custom_id, answer in answers.items():
        assert answer["response"]["status_code"] == 200 and answer["error"] is None
        body = answer["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] is not None
        rows = UsageRecord.objects.filter(request_id=answer["response"]["request_id"])
        assert rows.count() == 1 and rows[0].batch_id == batch.id and rows[0].status == "ok"
        assert rows[0].output_tokens == body["usage"]["completion_tokens"]


def test_batch_lines_are_billed_at_the_price_books_batch_discount(openai_client, catalog):
    Price.objects.filter(model=catalog["tollgate-mini"]).update(batch_discount_percent=Decimal("25"))
    batch = wait_for_end(openai_client, run_batch(openai_client, [chat_line("only", max_tokens=8)]).id)
    row = UsageRecord.objects.get(batch_id=batch.id)
    price = row.price
    full_input = money((row.input_tokens - row.cached_input_tokens) * price.input_per_mtok / Decimal(1_000_000)
                       + row.cached_input_tokens * price.cached_input_per_mtok / Decimal(1_000_000))
    full_output = money(row.output_tokens * price.output_per_mtok / Decimal(1_000_000))
    assert row.cost_input == money(full_input * Decimal("0.75"))
    assert row.cost_output == money(full_output * Decimal("0.75"))
    assert row.cost_total == row.cost_input + row.cost_output
    # The same request outside a batch pays the full price.
    direct = openai_client.chat.completions.with_raw_response.create(**chat_line("x", max_tokens=8)["body"])
    full = UsageRecord.objects.get(request_id=direct.headers["x-request-id"])
    assert full.batch_id == "" and full.output_tokens == row.output_tokens
    assert full.cost_output == full_output and full.cost_output > row.cost_output


def test_a_line_over_budget_goes_to_the_error_file_while_the_others_succeed(openai_client, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("0.001"))
    lines = [chat_line("small-1"), chat_line("too-big", model="tollgate-large", max_tokens=1000),
             chat_line("small-2")]
    batch = wait_for_end(openai_client, run_batch(openai_client, lines).id)

    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    assert set(results(openai_client, batch.output_file_id)) == {"small-1", "small-2"}
    failed = results(openai_client, batch.error_file_id)["too-big"]
    assert failed["response"]["status_code"] == 429
    assert failed["response"]["body"]["error"]["code"] == "budget_exceeded"
    refusal = UsageRecord.objects.get(request_id=failed["response"]["request_id"])
    assert refusal.status == "refused" and refusal.cost_total == 0 and refusal.batch_id == batch.id


def test_embeddings_and_completions_lines_are_served_too(openai_client):
    embed = run_batch(openai_client, [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "all-minilm-l6-v2", "input": f"text number {i}"}} for i in range(3)],
        endpoint="/v1/embeddings")
    complete = run_batch(openai_client, [
        {"custom_id": "c1", "method": "POST", "url": "/v1/completions",
         "body": {"model": "tollgate-mini", "prompt": "Once upon a time", "max_tokens": 4}},
        {"custom_id": "c2", "method": "POST", "url": "/v1/completions",
         "body": {"model": "tollgate-mini", "prompt": ["A", "B"], "max_tokens": 2}}],
        endpoint="/v1/completions")

    embedded = wait_for_end(openai_client, embed.id)
    completed = wait_for_end(openai_client, complete.id)

    vectors = results(openai_client, embedded.output_file_id)
    assert len(vectors) == 3 and len(vectors["e0"]["response"]["body"]["data"][0]["embedding"]) == 384
    texts = results(openai_client, completed.output_file_id)
    assert texts["c1"]["response"]["body"]["object"] == "text_completion"
    assert len(texts["c2"]["response"]["body"]["choices"]) == 2
    assert set(UsageRecord.objects.filter(batch_id=embedded.id).values_list("endpoint", flat=True)) == {"embeddings"}
    assert UsageRecord.objects.filter(batch_id=completed.id, endpoint="completions").count() == 3


def test_a_line_with_a_bad_body_is_answered_in_the_error_file_and_not_billed(openai_client):
    lines = [chat_line("good"), {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "tollgate-mini", "messages": [], "max_tokens": 3}},
             {"custom_id": "streamed", "method": "POST", "url": "/v1/chat/completions",
              "body": {**chat_line("s")["body"], "stream": True}}]
    batch = wait_for_end(openai_client, run_batch(openai_client, lines).id)
    errors = results(openai_client, batch.error_file_id)
    assert set(errors) == {"bad", "streamed"}
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["streamed"]["response"]["body"]["error"]["param"] == "stream"
    assert UsageRecord.objects.filter(batch_id=batch.id).count() == 1


def test_batches_are_listed_newest_first_with_pagination(openai_client):
    made = [run_batch(openai_client, [chat_line("one", max_tokens=1)]).id for _ in range(3)]
    for batch_id in made:
        wait_for_end(openai_client, batch_id)
    first = openai_client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    rest = openai_client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == [made[0]] and not rest.has_more


def test_another_orgs_batch_and_files_are_not_found(openai_client, live_gateway, make_tenant):
    import openai

    batch = wait_for_end(openai_client, run_batch(openai_client, [chat_line("mine", max_tokens=1)]).id)
    other = make_tenant("globex")
    stranger = openai.OpenAI(base_url=live_gateway.v1, api_key=other.plaintext, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.content(batch.output_file_id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.cancel(batch.id)
    assert stranger.batches.list().data == []


def test_batch_lines_reach_clickhouse_with_their_batch_id(openai_client, clickhouse):
    from metering.shipping import ship_pending_usage

    batch = wait_for_end(openai_client, run_batch(openai_client, [chat_line("a"), chat_line("b")]).id)
    ship_pending_usage()
    shipped = clickhouse.query("SELECT count() FROM usage_events FINAL WHERE batch_id = {batch:String}",
                               parameters={"batch": batch.id}).result_rows
    assert shipped == [(2,)]
