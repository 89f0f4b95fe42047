"""What the engines must honour: logprobs in OpenAI's shape, and response_format by constrained decoding.

Over real HTTP with the official openai client: the live gateway serving the
in-process CPU engine, and the same gateway in front of a real CPU worker
process (``serve_engine``, the HTTP API of a vLLM worker) through the remote
adapter. Nothing is faked; the CPU models' text has no meaning, so what is
checked is the shape, that the JSON parses and conforms, and the accounting.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from metering.models import UsageRecord
from serving import pools
from serving.engines.registry import in_process_engine
from serving.models import Deployment, Pool, Replica

from .conftest import MINI, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Describe the budget of the platform team."}]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tier": {"enum": ["mini", "small", "large"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tier", "active", "tags"],
    "additionalProperties": False,
}


def person_format(schema=PERSON) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The in-process engine on one intra-op thread, as the worker processes run (tests/engines/conftest.py):
    on the shared 2-core box two threads per forward pass oversubscribe it and every step waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cpu_worker():
    worker = WorkerProcess().start()
    yield worker
    worker.kill()


@pytest.fixture
def through_worker(db, cpu_worker):
    """tollgate-mini served by the CPU worker process, through the remote adapter (as a vLLM worker is)."""
    pool, _ = Pool.objects.update_or_create(name="interactive", defaults={"kind": "interactive"})
    Replica.objects.create(deployment=Deployment.objects.create(model=MINI, pool=pool), url=cpu_worker.url)
    pools.reload_pools()
    yield cpu_worker
    Replica.objects.all().delete()
    Deployment.objects.all().delete()
    Pool.objects.all().delete()
    pools.reload_pools()


def assert_openai_logprobs(entries, content: str, top: int) -> None:
    assert entries, "no logprobs came back"
    assert "".join(e.token for e in entries) == content
    for e in entries:
        assert e.logprob <= 0.0
        assert e.bytes == list(e.token.encode())
        assert len(e.top_logprobs) == top
        values = [t.logprob for t in e.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(t.bytes == list(t.token.encode()) for t in e.top_logprobs)


# ---------------------------------------------------------------- logprobs


@pytest.mark.parametrize("engine", ["in-process", "remote-worker"])
def test_logprobs_come_back_in_the_openai_shape_whole_and_streamed(openai_client, engine, request):
    if engine == "remote-worker":
        request.getfixturevalue("through_worker")
    whole = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=8, temperature=0,
                                                  logprobs=True, top_logprobs=3)
    choice = whole.choices[0]
    entries = choice.logprobs.content
    assert_openai_logprobs(entries, choice.message.content, top=3)
    assert len(entries) == whole.usage.completion_tokens == 8  # finish "length": no end token to leave out
    # Greedy: every token is the most likely one at its position.
    assert all(e.token == e.top_logprobs[0].token and e.logprob == e.top_logprobs[0].logprob for e in entries)

    stream = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=8, temperature=0,
                                                   logprobs=True, top_logprobs=3, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert content == choice.message.content
    assert_openai_logprobs(streamed, content, top=3)
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    assert chunks[-1].usage.completion_tokens == len(streamed)


def test_logprobs_without_top_logprobs_have_empty_alternatives_and_none_unless_asked(openai_client):
    asked = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=4, logprobs=True)
    assert_openai_logprobs(asked.choices[0].logprobs.content, asked.choices[0].message.content, top=0)
    plain = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_top_logprobs_without_logprobs_is_a_400_naming_it(openai_client):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=4, top_logprobs=2)
    assert err.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=4, logprobs=True,
                                              top_logprobs=21)
    assert err.value.body["param"] == "top_logprobs"
    assert UsageRecord.objects.count() == 0


# ---------------------------------------------------------------- structured output


@pytest.mark.parametrize("model", ["tollgate-mini", "tollgate-small", "tollgate-large"])
def test_json_mode_returns_a_parseable_json_object_from_every_served_model(openai_client, model):
    for seed in (1, 2):
        completion = openai_client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=48, seed=seed, response_format={"type": "json_object"})
        choice = completion.choices[0]
        assert isinstance(json.loads(choice.message.content), dict)
        assert choice.finish_reason == "stop"
        assert completion.usage.completion_tokens <= 48


@pytest.mark.parametrize("max_tokens", [40, 96])
def test_json_schema_output_conforms_to_the_schema_and_ends_within_max_tokens(openai_client, max_tokens):
    for seed in (1, 2):
        completion = openai_client.chat.completions.create(
            model=MINI, messages=MESSAGES, max_tokens=max_tokens, seed=seed, response_format=person_format())
        choice = completion.choices[0]
        jsonschema.validate(json.loads(choice.message.content), PERSON)
        assert choice.finish_reason == "stop"
        assert completion.usage.completion_tokens <= max_tokens


def test_a_schema_that_cannot_close_within_max_tokens_ends_with_length(openai_client):
    completion = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=6,
                                                       response_format=person_format())
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 6


def test_streamed_json_schema_output_conforms_too(openai_client):
    stream = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=60, seed=4,
                                                   response_format=person_format(), stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
    assert chunks[-1].choices[0].finish_reason == "stop"


INVALID_FORMATS = {
    "unknown-type": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
    "required-not-a-list": {"type": "json_schema",
                            "json_schema": {"name": "x", "schema": {"type": "object", "required": "name"}}},
    "no-json_schema": {"type": "json_schema"},
}


def test_an_invalid_schema_is_a_400_naming_response_format(openai_client):
    for case, response_format in INVALID_FORMATS.items():
        with pytest.raises(openai.BadRequestError) as err:
            openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=8,
                                                  response_format=response_format)
        assert err.value.body["param"].startswith("response_format"), case
    assert UsageRecord.objects.count() == 0  # refused at the edge


UNWRITABLE = {"type": "object", "properties": {"Name": {"type": "string"}}, "required": ["Name"]}


@pytest.mark.parametrize("engine", ["in-process", "remote-worker"])
def test_a_schema_the_engine_cannot_enforce_is_a_400_naming_response_format_not_a_5xx(
        openai_client, engine, request):
    if engine == "remote-worker":
        request.getfixturevalue("through_worker")
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            result = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=8,
                                                           stream=stream, response_format=person_format(UNWRITABLE))
            list(result) if stream else None
        assert err.value.body["param"] == "response_format"
        assert "Name" in err.value.message
    rows = list(UsageRecord.objects.all())
    assert len(rows) == 2 and all(r.error_code == "engine_rejected" and r.cost_total == 0 for r in rows)


def test_a_remote_worker_honours_response_format_and_sends_logprobs(openai_client, through_worker):
    completion = openai_client.chat.completions.create(model=MINI, messages=MESSAGES, max_tokens=60, seed=5,
                                                       response_format=person_format(), logprobs=True)
    choice = completion.choices[0]
    jsonschema.validate(json.loads(choice.message.content), PERSON)
    assert len(choice.logprobs.content) == completion.usage.completion_tokens - 1  # the end token is not shown
    assert UsageRecord.objects.get().replica == through_worker.url


def test_constrained_and_free_sequences_decode_in_the_same_batch(openai_client):
    def ask(i: int):
        fmt = {"response_format": person_format()} if i % 2 else {}
        raw = openai_client.chat.completions.with_raw_response.create(
            model=MINI, messages=MESSAGES, max_tokens=80, temperature=0, **fmt)
        return i % 2 == 1, raw.headers["x-request-id"], raw.parse()

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    for constrained, _, completion in answers:
        if constrained:
            jsonschema.validate(json.loads(completion.choices[0].message.content), PERSON)
    constrained_ids = {rid for c, rid, _ in answers if c}
    free_ids = {rid for c, rid, _ in answers if not c}
    shared = [step for step in in_process_engine().step_log
              if step.kind == "decode" and constrained_ids & set(step.request_ids) and free_ids & set(step.request_ids)]
    assert shared, "no decode step held both a constrained and a free sequence"
