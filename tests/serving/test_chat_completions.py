"""The official openai client against a live gateway: answers, streams, usage and cost."""

from decimal import Decimal

import pytest

from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]


def expected_cost(record: UsageRecord) -> Decimal:
    price = record.price
    return (record.input_tokens * price.input_per_mtok + record.output_tokens * price.output_per_mtok) / Decimal(
        1_000_000
    )


def test_chat_completion_usage_matches_ledger_and_cost_header_matches_price_book(openai_client, tenant):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=MESSAGES, max_tokens=12, temperature=0
    )
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.model == "tollgate-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert 1 <= completion.usage.completion_tokens <= 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert record.organization_id == tenant.org.pk
    assert record.feature == "chat"  # the key's default feature
    assert record.status == UsageRecord.Status.OK
    assert record.input_tokens == completion.usage.prompt_tokens
    assert record.output_tokens == completion.usage.completion_tokens
    assert Decimal(raw.headers["x-tollgate-cost"]) == record.cost_total == expected_cost(record)
    assert record.cost_total > 0
    assert raw.headers["x-tollgate-model"] == "tollgate-mini"
    assert completion.id.endswith(raw.headers["x-request-id"])


def test_streamed_completion_reports_usage_equal_to_the_ledger(openai_client, tenant):
    stream = openai_client.chat.completions.create(
        model="tollgate-small", messages=MESSAGES, max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage_chunks = [c for c in chunks if c.usage is not None]

    assert chunks[0].choices[0].delta.role == "assistant"
    assert content_chunks, "the stream carried no text"
    assert finish in (["length"], ["stop"])
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    usage = usage_chunks[0].usage

    record = UsageRecord.objects.get(request_id=chunks[0].id.removeprefix("chatcmpl-"))
    assert record.streamed
    assert record.status == UsageRecord.Status.OK
    assert (record.input_tokens, record.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert record.cost_total == expected_cost(record)


def test_x_feature_header_attributes_usage_to_that_feature(live_gateway, tenant):
    import openai

    client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0,
                           default_headers={"X-Feature": "search"})
    raw = client.chat.completions.with_raw_response.create(model="tollgate-mini", messages=MESSAGES, max_tokens=4)
    assert UsageRecord.objects.get(request_id=raw.headers["x-request-id"]).feature == "search"


def test_models_lists_the_served_catalog(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert ids == ["all-minilm-l6-v2", "tollgate-mini", "tollgate-small", "tollgate-large"]
    assert openai_client.models.retrieve("tollgate-large").id == "tollgate-large"
