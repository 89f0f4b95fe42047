"""Confidence-based escalation: a routed request's answer is validated, and a failing one is retried one
tier up, up to the policy's limit; discarded answers are billed once, as escalation cost.

Over real HTTP with the official openai client, on the in-process CPU engine (its text has no meaning,
so the checks are made to fail on purpose: a caller regex no answer matches, a confidence bar no token
reaches, a length cap every answer hits).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

EXTRACTION = [{"role": "user", "content": "Extract the email address from: write to ana@example.com today."}]
NEVER = {"regex": "^THIS WILL NOT MATCH$"}


def flag_everything(text: str) -> str:
    """An unsafe-content check (a pluggable setting) that flags every answer."""
    return "flagged_by_test"


@pytest.fixture
def policy(tenant):
    from routing.models import RoutingPolicy

    def make(**fields):
        return RoutingPolicy.objects.create(organization=tenant.org, **fields)

    return make


def rows(request_id: str) -> list[UsageRecord]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = list(UsageRecord.objects.filter(request_id=request_id).order_by("created_at", "event_id"))
        if found:
            return found
        time.sleep(0.05)
    return []


def tiers(records) -> list[int]:
    from metering.models import CatalogModel

    tier = dict(CatalogModel.objects.values_list("name", "tier"))
    return [tier[r.model_served] for r in records]


def ask(client, messages=EXTRACTION, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    return client.chat.completions.with_raw_response.create(model="auto", temperature=0, messages=messages, **kwargs)


def test_a_failing_answer_escalates_one_tier_at_a_time_and_stops_at_the_limit(openai_client, policy):
    policy(escalation_limit=2)
    raw = ask(openai_client, extra_body={"validation": NEVER})
    answer = raw.parse()

    records = rows(raw.headers["x-request-id"])
    first = tiers(records)[0]
    assert tiers(records) == list(range(first, first + len(records)))  # one tier up each time
    assert 2 <= len(records) <= 3 and raw.headers["x-tollgate-attempts"] == str(len(records))
    assert raw.headers["x-tollgate-validation"] == "failed:caller_regex"
    assert raw.headers["x-tollgate-escalated"] == "->".join(r.model_served for r in records)
    assert answer.model == records[-1].model_served == raw.headers["x-tollgate-model"]
    *discarded, kept = records
    assert all(r.discarded and r.attempt_kind == "escalation" or r.discarded and r.attempt_kind == "primary"
               for r in discarded)
    assert all(r.cost_escalation > 0 and r.cost_base == 0 for r in discarded)
    assert not kept.discarded and kept.cost_base > 0
    assert Decimal(raw.headers["x-tollgate-cost"]) == sum(r.cost_total for r in records)


def test_the_escalation_limit_bounds_the_attempts(openai_client, policy):
    policy(escalation_limit=1)
    raw = ask(openai_client, extra_body={"validation": NEVER})
    records = rows(raw.headers["x-request-id"])
    assert len(records) == 2 and [r.discarded for r in records] == [True, False]


def test_a_truncated_answer_escalates_when_the_policy_says_so(openai_client, policy):
    policy(escalation_limit=1, escalate_on_truncation=True)
    raw = ask(openai_client, max_tokens=2)
    assert raw.headers["x-tollgate-validation"] == "failed:truncated"
    assert len(rows(raw.headers["x-request-id"])) == 2


def test_low_confidence_escalates_and_logprobs_stay_out_of_an_answer_that_did_not_ask(openai_client, policy):
    policy(escalation_limit=1, logprob_mean_threshold=0.0)  # no answer is that sure: every one fails
    raw = ask(openai_client)
    assert raw.headers["x-tollgate-validation"] == "failed:low_confidence_mean"
    assert len(rows(raw.headers["x-request-id"])) == 2
    assert raw.parse().choices[0].logprobs is None


def test_an_unsafe_answer_escalates_through_the_pluggable_check(openai_client, policy, settings):
    settings.TOLLGATE_UNSAFE_CONTENT_CHECK = "tests.serving.test_escalation.flag_everything"
    policy(escalation_limit=1)
    raw = ask(openai_client)
    assert raw.headers["x-tollgate-validation"] == "failed:unsafe_flagged_by_test"
    assert len(rows(raw.headers["x-request-id"])) == 2


def test_json_mode_passes_on_the_cheapest_model_without_escalating(openai_client, policy):
    policy(escalation_limit=2)
    raw = ask(openai_client, max_tokens=40, response_format={"type": "json_object"})
    json.loads(raw.parse().choices[0].message.content)
    assert raw.headers["x-tollgate-validation"] == "passed"
    assert len(rows(raw.headers["x-request-id"])) == 1


def test_a_named_model_is_validated_but_never_swapped(openai_client, policy):
    policy(escalation_limit=2)
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", temperature=0, max_tokens=4, messages=EXTRACTION, extra_body={"validation": NEVER})
    assert raw.headers["x-tollgate-validation"] == "failed:caller_regex"
    assert "x-tollgate-escalated" not in raw.headers
    assert len(rows(raw.headers["x-request-id"])) == 1


def test_a_streamed_request_that_may_escalate_streams_the_accepted_answer(openai_client, policy):
    policy(escalation_limit=1)
    with openai_client.chat.completions.with_streaming_response.create(
            model="auto", temperature=0, max_tokens=4, messages=EXTRACTION, stream=True,
            extra_body={"validation": NEVER}) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
        escalated = response.headers["x-tollgate-escalated"]
    records = rows(response.headers["x-request-id"])
    assert escalated == "->".join(r.model_served for r in records) and len(records) == 2
    assert records[-1].output_tokens > 0 and text


def test_a_bad_validation_field_is_a_400_naming_it(openai_client):
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        ask(openai_client, extra_body={"validation": {"regex": "("}})
    assert refused.value.body["param"].startswith("validation")
