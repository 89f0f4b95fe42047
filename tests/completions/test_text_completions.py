"""/v1/completions through the live gateway with the official openai client: the legacy text endpoint on
the same flow as chat (route, budget, generate, settle), billed like chat with endpoint "completions"."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from metering.models import UsageRecord
from tests.engines.conftest import MINI, WorkerProcess, deploy, usage_row  # noqa: F401 (deploy: a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Once upon a time"


def billed_rows(request_id: str) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(request_id=request_id, endpoint="completions"))


def test_a_text_completion_answers_with_usage_and_is_billed_as_a_completions_row(openai_client):
    raw = openai_client.completions.with_raw_response.create(model="tollgate-mini", prompt=PROMPT, max_tokens=6,
                                                             temperature=0)
    completion = raw.parse()

    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == "tollgate-mini"
    assert len(completion.choices) == 1 and completion.choices[0].text
    assert completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.completion_tokens <= 6 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    row = usage_row(completion.id.removeprefix("cmpl-"))
    assert row.endpoint == "completions" and row.model_served == "tollgate-mini"
    assert (row.input_tokens, row.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert row.cost_total > 0 and Decimal(raw.headers["X-Tollgate-Cost"]) == row.cost_total


def test_echo_puts_the_prompt_before_the_generated_text(openai_client):
    completion = openai_client.completions.create(model="tollgate-mini", prompt=PROMPT, max_tokens=4,
                                                  temperature=0, echo=True)
    assert completion.choices[0].text.startswith(PROMPT) and len(completion.choices[0].text) > len(PROMPT)


def test_a_list_of_prompts_gets_one_choice_per_prompt_each_billed(openai_client):
    prompts = ["The sky is", "Budgets are", "A gateway"]
    raw = openai_client.completions.with_raw_response.create(model="tollgate-mini", prompt=prompts, max_tokens=3,
                                                             temperature=0)
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    rows = UsageRecord.objects.filter(endpoint="completions", status="ok")
    assert rows.count() == 3
    assert sum(r.input_tokens for r in rows) == completion.usage.prompt_tokens
    assert sum(r.cost_total for r in rows) == Decimal(raw.headers["X-Tollgate-Cost"])


def test_a_stop_sequence_and_max_tokens_are_honoured(openai_client):
    completion = openai_client.completions.create(model="tollgate-mini", prompt=PROMPT, max_tokens=2, temperature=0)
    assert completion.usage.completion_tokens <= 2
    assert completion.choices[0].finish_reason == "length" or completion.usage.completion_tokens < 2
    stopped = openai_client.completions.create(model="tollgate-mini", prompt=PROMPT, max_tokens=30, temperature=0,
                                               stop=["e", "a", "o", "i"])
    assert not any(s in stopped.choices[0].text for s in ["e", "a", "o", "i"])


def test_a_streamed_completion_ends_with_usage_and_matches_its_row(openai_client):
    stream = openai_client.completions.create(model="tollgate-mini", prompt=PROMPT, max_tokens=6, temperature=0,
                                              stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert all(c.object == "text_completion" for c in chunks)
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None and final.usage.completion_tokens >= 1
    assert text
    row = usage_row(final.id.removeprefix("cmpl-"))
    assert row.endpoint == "completions" and row.streamed
    assert row.output_tokens == final.usage.completion_tokens


def test_logprobs_is_refused_naming_it_and_not_billed(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.completions.create(model="tollgate-mini", prompt=PROMPT, max_tokens=3, logprobs=2)
    assert refused.value.body["param"] == "logprobs"
    assert not UsageRecord.objects.filter(endpoint="completions").exists()


def test_a_completion_through_a_remote_worker_sends_the_raw_prompt(openai_client, deploy):
    worker = WorkerProcess().start()
    try:
        deploy(MINI, [worker.url])
        completion = openai_client.completions.create(model=MINI, prompt=PROMPT, max_tokens=5, temperature=0)
        row = usage_row(completion.id.removeprefix("cmpl-"))
        assert row.replica == worker.url and row.endpoint == "completions"
        assert row.input_tokens == completion.usage.prompt_tokens
        # The raw prompt ([CLS] + text, no chat template) is shorter than the same text as a chat message.
        chat = openai_client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": PROMPT}],
                                                     max_tokens=1)
        assert completion.usage.prompt_tokens < chat.usage.prompt_tokens
        stream = openai_client.completions.create(model=MINI, prompt=PROMPT, max_tokens=4, stream=True,
                                                  stream_options={"include_usage": True})
        assert list(stream)[-1].usage.completion_tokens >= 1
    finally:
        worker.kill()
