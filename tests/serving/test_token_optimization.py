"""Token optimization: fewer input tokens for the same request, every step accounted, every step switchable.

The steps' rules on plain messages, then the whole stage over real HTTP with the
official openai client: the saving on the usage row equals what the engine
counted (the same request with optimization off is the baseline).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from metering.models import UsageRecord
from serving import optimization
from serving.engines.base import ChatMessage
from serving.stages.optimize_tokens import count_tokens, embed_texts

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "tollgate-mini"
SYSTEM = "You are the billing assistant of Acme. Never reveal card numbers."


def row(request_id: str, kind: str = UsageRecord.AttemptKind.PRIMARY) -> UsageRecord:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = UsageRecord.objects.filter(request_id=request_id, attempt_kind=kind).first()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {kind} row for {request_id}")


def ask(client, messages, optimize: str | None = None, **kwargs):
    headers = {"X-Tollgate-Optimize": optimize} if optimize is not None else {}
    return client.chat.completions.with_raw_response.create(model=MODEL, max_tokens=2, temperature=0,
                                                            messages=messages, extra_headers=headers, **kwargs)


# ---------------------------------------------------------------- the steps


def test_duplicate_system_prompts_are_kept_once_and_the_question_is_untouched():
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", "hi"), ChatMessage("system", f"  {SYSTEM} "),
                ChatMessage("user", "What is my balance?"))
    out = optimization.drop_duplicate_system_prompts(messages)
    assert [m.content for m in out] == [SYSTEM, "hi", "What is my balance?"]


def test_tool_outputs_are_minified_without_nulls_and_with_long_fields_cut():
    payload = {"invoice": {"id": 7, "memo": None, "lines": [], "notes": "x" * 500, "total": "12.00"}}
    messages = (ChatMessage("user", "total?"), ChatMessage("tool", json.dumps(payload, indent=4)),
                ChatMessage("tool", "not json at all"))
    compact, untouched = optimization.compact_tool_outputs(messages, max_field_chars=20)[1:]
    assert json.loads(compact.content) == {"invoice": {"id": 7, "notes": "x" * 20 + "…", "total": "12.00"}}
    assert untouched.content == "not json at all"


def test_history_split_keeps_system_prompts_and_the_last_user_turn_within_budget():
    turns = [ChatMessage("user" if i % 2 == 0 else "assistant", f"turn {i} " * 30) for i in range(12)]
    messages = (ChatMessage("system", SYSTEM), *turns, ChatMessage("user", "And now?"))
    split = optimization.split_history(messages, 400, count_tokens, summary_tokens=40)
    result = split.with_summary("they talked")
    assert result[0].content == SYSTEM and result[-1].content == "And now?"
    assert result[1].content.startswith(optimization.SUMMARY_PREFIX)
    assert count_tokens(result) <= 400 < count_tokens(messages)
    assert split.summarized == tuple(turns[:len(split.summarized)])  # the oldest turns, in order


# ---------------------------------------------------------------- through the gateway


def test_a_duplicated_system_prompt_is_sent_once_and_the_saving_equals_the_counted_tokens(openai_client):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "What is my balance?"}]
    baseline = ask(openai_client, messages, optimize="off").parse().usage.prompt_tokens
    raw = ask(openai_client, messages)

    sent = raw.parse().usage.prompt_tokens
    saved = row(raw.headers["x-request-id"])
    assert sent < baseline
    assert saved.tokens_saved == baseline - sent
    assert saved.savings_tokens > 0


def test_oversized_context_keeps_the_paragraphs_about_the_question_within_budget(openai_client, settings):
    settings.TOLLGATE_CONTEXT_BUDGET_TOKENS = 220
    filler = [f"Paragraph {i} is about the history of {topic} in the northern provinces." for i, topic in
              enumerate(["sailing", "cheese", "volcanoes", "opera", "rugby", "glaciers", "tea", "chess"] * 3)]
    relevant = "The refund policy: invoices can be refunded within 30 days of payment."
    document = "\n\n".join(filler[:11] + [relevant] + filler[11:])
    messages = [{"role": "user", "content": f"{document}\n\nWithin how many days can an invoice be refunded?"}]

    raw = ask(openai_client, messages)

    assert raw.parse().usage.prompt_tokens <= 220
    assert row(raw.headers["x-request-id"]).tokens_saved > 0
    # What the stage kept, with the same embeddings: the paragraph about refunds, and the question.
    prompt = (ChatMessage("user", messages[0]["content"]),)
    chunks = optimization.context_chunks(prompt)
    similarity = optimization.cosine_to_question(asyncio.run(embed_texts(
        [optimization.question(prompt)] + [text for _, text in chunks])))
    kept = optimization.select_context(prompt, 220, count_tokens, similarity)
    assert relevant in kept[0].content and kept[0].content.endswith("refunded?")
    assert count_tokens(kept) == raw.parse().usage.prompt_tokens


def test_long_history_is_summarized_by_the_cheapest_model_once_per_conversation(openai_client, settings):
    settings.TOLLGATE_HISTORY_BUDGET_TOKENS = 300
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Point {i}: " + "budget detail " * 12}
               for i in range(10)]
    messages = [{"role": "system", "content": SYSTEM}, *history, {"role": "user", "content": "Summarize my options."}]

    first = ask(openai_client, messages)
    summary = row(first.headers["x-request-id"], UsageRecord.AttemptKind.SUMMARY)
    answer = row(first.headers["x-request-id"])
    assert first.parse().usage.prompt_tokens <= 300 and answer.tokens_saved > 0
    assert summary.model_served == "tollgate-mini" and summary.cost_total > 0  # the saving's own cost, billed

    again = ask(openai_client, messages)  # the same conversation: the kept summary, no new generation
    assert not UsageRecord.objects.filter(request_id=again.headers["x-request-id"],
                                          attempt_kind=UsageRecord.AttemptKind.SUMMARY).exists()
    assert again.parse().usage.prompt_tokens == first.parse().usage.prompt_tokens


def test_a_request_can_switch_optimization_off_or_choose_its_steps(openai_client):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "hello"}]
    off = ask(openai_client, messages, optimize="off")
    only_tools = ask(openai_client, messages, optimize="tools")
    assert row(off.headers["x-request-id"]).tokens_saved == 0
    assert row(only_tools.headers["x-request-id"]).tokens_saved == 0  # dedupe was not among its steps
    assert off.parse().usage.prompt_tokens == only_tools.parse().usage.prompt_tokens


def test_an_unknown_optimization_step_is_a_400_naming_the_header(live_gateway, tenant):
    response = httpx.post(f"{live_gateway.v1}/chat/completions", timeout=30, headers={
        "Authorization": f"Bearer {tenant.plaintext}", "X-Tollgate-Optimize": "dedupe,squeeze"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "X-Tollgate-Optimize"


def test_verbosity_low_asks_for_a_concise_answer_and_unknown_values_are_refused(openai_client):
    messages = [{"role": "user", "content": "Explain invoices."}]
    plain = ask(openai_client, messages).parse().usage.prompt_tokens
    concise = ask(openai_client, messages, verbosity="low").parse().usage.prompt_tokens
    assert concise > plain  # the instruction went to the engine
    with pytest.raises(openai.BadRequestError) as refused:
        ask(openai_client, messages, verbosity="terse")
    assert refused.value.body["param"] == "verbosity"


def test_a_feature_policy_switches_steps_off_and_caps_max_tokens_and_says_so(openai_client, tenant):
    from routing.models import RoutingPolicy

    RoutingPolicy.objects.create(organization=tenant.org, feature=tenant.features["chat"],
                                 dedupe_system_prompts=False, max_tokens_cap=3)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "hello"}]

    raw = openai_client.chat.completions.with_raw_response.create(model=MODEL, max_tokens=50, temperature=0,
                                                                  messages=messages)

    answer = raw.parse()
    assert row(raw.headers["x-request-id"]).tokens_saved == 0  # the policy keeps duplicate system prompts
    assert answer.usage.completion_tokens <= 3
    assert raw.headers["x-tollgate-max-tokens-capped"] == "50->3"


def test_a_request_no_step_can_shrink_is_passed_over_without_counting_its_tokens():
    from serving.stages.optimize_tokens import TokenPolicy, may_save

    policy = TokenPolicy(steps=frozenset({"dedupe", "tools", "context", "history"}), context_budget=200,
                         history_budget=300, tool_field_chars=100, summary_tokens=20)
    short = (ChatMessage("system", SYSTEM), ChatMessage("user", "What is my balance?"))
    assert not may_save(short, policy)
    assert may_save((*short, ChatMessage("system", SYSTEM)), policy)
    assert may_save((*short, ChatMessage("tool", '{"a": null}')), policy)
    long = (ChatMessage("user", "word " * 60),)
    assert may_save(long, policy) and count_tokens(long) > 0
    # The bound is safe: whatever it passes over really fits the budgets.
    assert count_tokens(short) <= policy.context_budget
