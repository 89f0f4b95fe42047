"""Every OpenAI parameter is honoured, passed on to an engine that honours it, or refused with a 400 naming it.

The CPU engine honours the core sampling parameters, logprobs and
response_format (tests/engines/test_logprobs_and_structured_output.py); a
vLLM worker also takes penalties and logit_bias, and the remote adapter
passes them on. vLLM cannot run here (no GPU), so a stand-in that speaks its
HTTP API records what the gateway sent it; Tollgate's own CPU worker (a real
``serve_engine`` process) refuses what it cannot honour, naming it, and the
gateway relays that as the caller's 400.
"""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from metering.models import UsageRecord
from serving import pools
from serving.models import Deployment, Pool, Replica
from tests.conftest import free_port
from tests.engines.conftest import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Describe a budget in one line."}]


@pytest.mark.parametrize("param, value", [
    ("presence_penalty", 0.5),
    ("frequency_penalty", -0.5),
    ("logit_bias", {"42": 10}),
    ("n", 2),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ("tool_choice", "auto"),
    ("reasoning_effort", "low"),
    ("store", True),
    ("metadata", {"team": "a"}),
])
def test_a_parameter_the_cpu_engine_cannot_honour_is_a_400_naming_it(openai_client, param, value):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=4,
                                              **{param: value})
    assert err.value.body["param"] == param
    assert err.value.body["code"] == "unsupported_parameter"
    assert param in err.value.message
    assert UsageRecord.objects.count() == 0  # refused before the budget or the engine was touched


def test_neutral_values_of_unsupported_parameters_are_accepted(openai_client):
    # What SDKs and frameworks send by default asks for nothing the engine would have to do.
    completion = openai_client.chat.completions.create(
        model="tollgate-mini", messages=MESSAGES, max_tokens=3, n=1, presence_penalty=0, frequency_penalty=0,
        logprobs=False, response_format={"type": "text"}, service_tier="auto")
    assert completion.usage.completion_tokens == 3


def test_a_message_name_is_refused_by_an_engine_that_cannot_use_it(openai_client):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="tollgate-mini", max_tokens=3,
                                              messages=[{"role": "user", "content": "hi", "name": "ada"}])
    assert err.value.body["param"] == "messages.name"


def test_top_p_zero_is_honoured_as_the_most_likely_token_not_turned_into_one(openai_client):
    def answer(**sampling) -> str:
        return openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=16,
                                                     **sampling).choices[0].message.content

    greedy = answer(temperature=0)
    # At temperature 1 with no seed, a nucleus of one token is the only way two answers agree with greedy.
    assert answer(temperature=1, top_p=0) == greedy
    assert answer(temperature=1, top_p=0) == greedy


def test_the_core_sampling_parameters_are_honoured(openai_client):
    seeded = dict(model="tollgate-mini", messages=MESSAGES, max_tokens=12, temperature=1.2, top_p=0.9, seed=7)
    first = openai_client.chat.completions.create(**seeded).choices[0].message.content
    second = openai_client.chat.completions.create(**seeded).choices[0].message.content
    assert first == second  # the seed is honoured
    stopped = openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=3)
    assert stopped.usage.completion_tokens == 3 and stopped.choices[0].finish_reason == "length"


# ---------------------------------------------------------------- engines that honour more


class RecordingVllmStandIn:
    """Speaks vLLM's streaming chat API on a free port and keeps every body it was sent."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

        async def chat(request: Request) -> Response:
            self.bodies.append(json.loads(await request.body()))
            usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                {"choices": [{"index": 0, "delta": {"content": "{}"}}], "usage": dict(usage, completion_tokens=1)},
                {"choices": [{"index": 0, "delta": {"content": " "}, "finish_reason": "stop"}], "usage": usage},
                {"choices": [], "usage": usage},
            ]
            body = b"".join(b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0,
                                                    "model": "tollgate-mini", **c}).encode() + b"\n\n"
                            for c in chunks) + b"data: [DONE]\n\n"
            return Response(body, media_type="text/event-stream")

        async def health(request: Request) -> Response:
            return Response(status_code=200)

        app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                Route("/health", health), Route("/metrics", health)])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "stand-in did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def deploy_mini_on(db):
    def deploy(url: str):
        pool, _ = Pool.objects.update_or_create(name="interactive", defaults={"kind": "interactive"})
        Replica.objects.create(deployment=Deployment.objects.create(model="tollgate-mini", pool=pool), url=url)
        pools.reload_pools()

    yield deploy
    Replica.objects.all().delete()
    Deployment.objects.all().delete()
    Pool.objects.all().delete()
    pools.reload_pools()


def test_parameters_a_vllm_worker_honours_are_passed_on_to_it(openai_client, deploy_mini_on):
    schema = {"name": "answer", "schema": {"type": "object"}, "strict": True}
    with RecordingVllmStandIn() as vllm:
        deploy_mini_on(vllm.url)
        completion = openai_client.chat.completions.create(
            model="tollgate-mini", max_tokens=5, temperature=1, top_p=0, seed=3, stop=["\n"],
            presence_penalty=0.5, frequency_penalty=-0.25, logit_bias={"42": -100},
            response_format={"type": "json_schema", "json_schema": schema},
            messages=[{"role": "user", "content": "hi", "name": "ada"}])

    assert completion.choices[0].message.content == "{} "
    sent = vllm.bodies[-1]
    assert sent["presence_penalty"] == 0.5 and sent["frequency_penalty"] == -0.25
    assert sent["logit_bias"] == {"42": -100}
    assert sent["response_format"] == {"type": "json_schema", "json_schema": schema}
    assert sent["messages"] == [{"role": "user", "content": "hi", "name": "ada"}]
    assert sent["seed"] == 3 and sent["stop"] == ["\n"] and sent["max_tokens"] == 5
    # vLLM refuses top_p 0; the same meaning (only the most likely token) is greedy decoding there.
    assert sent["temperature"] == 0.0 and sent["top_p"] == 1.0
    assert UsageRecord.objects.get().output_tokens == 2


def test_a_cpu_worker_refuses_what_it_cannot_honour_and_the_gateway_relays_the_400(openai_client, deploy_mini_on):
    worker = WorkerProcess().start()
    try:
        deploy_mini_on(worker.url)
        with pytest.raises(openai.BadRequestError) as err:
            openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=3,
                                                  presence_penalty=0.5)
    finally:
        worker.kill()
    assert err.value.body["param"] == "presence_penalty"
    assert "presence_penalty" in err.value.message
    row = UsageRecord.objects.get()
    assert row.status == UsageRecord.Status.ERROR and row.error_code == "engine_rejected" and row.cost_total == 0


def test_continuous_usage_stats_puts_the_running_count_in_every_chunk(openai_client):
    stream = openai_client.chat.completions.create(
        model="tollgate-mini", messages=MESSAGES, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = list(stream)
    running = [c.usage.completion_tokens for c in chunks if c.choices and c.choices[0].delta.content]
    assert running and running == sorted(running) and running[-1] <= 6
    assert all(c.usage.prompt_tokens > 0 for c in chunks if c.choices and c.choices[0].delta.content)
    assert chunks[-1].usage.completion_tokens == 6  # the final usage chunk
