"""The official openai client against a live gateway: answers, streams, usage and cost."""

from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.conf import settings

from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]


def cached_tokens(usage) -> int:
    """The prompt tokens the engine's prefix cache supplied, as the client sees them."""
    details = usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


def expected_cost(record: UsageRecord, usage) -> Decimal:
    """The price book applied by hand to the client's usage (the rule of metering.pricing.cost_of_tokens).

    Cached prompt tokens are billed at the cached-input price and the rest of the prompt at the input price;
    input and output are each rounded to the money quantum. The CPU engine has a prefix cache, so whether
    a prompt was cached depends on what earlier tests sent: this holds either way.
    """
    price = record.price
    cached = cached_tokens(usage)
    per_million = Decimal(1_000_000)

    def money(amount: Decimal) -> Decimal:
        return amount.quantize(settings.MONEY_QUANTUM, rounding=ROUND_HALF_UP)

    cost_input = money(((usage.prompt_tokens - cached) * price.input_per_mtok
                        + cached * price.cached_input_per_mtok) / per_million)
    cost_output = money(usage.completion_tokens * price.output_per_mtok / per_million)
    return cost_input + cost_output


# "warm": the same request is sent once before, so the measured one's prompt comes from the prefix cache
# whatever ran earlier in the session (and even when this case runs alone).
cache = pytest.mark.parametrize("warm", [False, True], ids=["as-is", "prompt-cached"])


@cache
def test_chat_completion_usage_matches_ledger_and_cost_header_matches_price_book(openai_client, tenant, warm):
    request = dict(model="tollgate-mini", messages=MESSAGES, max_tokens=12, temperature=0)
    if warm:
        openai_client.chat.completions.create(**request)
    raw = openai_client.chat.completions.with_raw_response.create(**request)
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
    assert record.cached_input_tokens == cached_tokens(completion.usage)
    if warm:
        assert 0 < cached_tokens(completion.usage) < completion.usage.prompt_tokens
    assert Decimal(raw.headers["x-tollgate-cost"]) == record.cost_total == expected_cost(record, completion.usage)
    assert record.cost_total > 0
    assert raw.headers["x-tollgate-model"] == "tollgate-mini"
    assert completion.id.endswith(raw.headers["x-request-id"])


@cache
def test_streamed_completion_reports_usage_equal_to_the_ledger(openai_client, tenant, warm):
    request = dict(model="tollgate-small", messages=MESSAGES, max_tokens=16)
    if warm:
        openai_client.chat.completions.create(**request)
    stream = openai_client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
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
    assert record.cached_input_tokens == cached_tokens(usage)
    if warm:
        assert 0 < cached_tokens(usage) < usage.prompt_tokens
    assert record.cost_total == expected_cost(record, usage)


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
