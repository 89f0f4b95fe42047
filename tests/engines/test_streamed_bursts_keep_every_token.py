"""A worker's burst of chunks (read at once, passed on as one batch and one write) still reaches the caller
as one SSE event per token, in order, each token once, the finish and usage chunks last; its content
chunks are byte for byte what pydantic would render; an error in the middle of a burst still lets the
tokens before it out first.

The worker here is a raw ASGI app that writes a whole answer in one send, as a fast vLLM worker's
output arrives when the gateway reads it late (no GPU, so no vLLM, here).
"""

from __future__ import annotations

import json

import httpx
import pytest

from serving.protocol import ChatCompletionChunk

from .conftest import MINI, asgi_worker, usage_row

# Texts that need escaping in JSON, and some that do not.
pytestmark = pytest.mark.django_db(transaction=True)

TOKENS = [f" t{i}" for i in range(40)] + [' "quoted"', " back\\slash", " new\nline", " ünïcødé", " 🙂", "\t"]


def _event(body: dict) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _chunk(delta: dict, finish: str | None, produced: int, choices: bool = True) -> bytes:
    return _event({"id": "chatcmpl-burst", "object": "chat.completion.chunk", "created": 1700000000, "model": MINI,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices
                   else [],
                   "usage": {"prompt_tokens": 7, "completion_tokens": produced, "total_tokens": 7 + produced}})


def burst(fail_after: int | None = None) -> bytes:
    """A whole answer in vLLM's shape with continuous usage (what the gateway asks its workers for)."""
    events = [_chunk({"role": "assistant", "content": ""}, None, 0)]
    for i, token in enumerate(TOKENS):
        if i == fail_after:
            return b"".join(events) + _event({"error": {"message": "worker fell over", "code": 500}})
        events.append(_chunk({"content": token}, None, i + 1))
    events += [_chunk({}, "stop", len(TOKENS)), _chunk({}, None, len(TOKENS), choices=False), b"data: [DONE]\n\n"]
    return b"".join(events)


async def bursting_worker(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/chat/completions"):
        fail = b"fail midway" in body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": burst(fail_after=3 if fail else None)})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def bursting_worker_url():
    with asgi_worker(bursting_worker) as url:
        yield url


def sse_events(live_gateway, tenant, content: str) -> tuple[str, list[bytes]]:
    with httpx.stream("POST", f"{live_gateway.v1}/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {tenant.plaintext}"},
                      json={"model": MINI, "messages": [{"role": "user", "content": content}], "max_tokens": 64,
                            "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        raw = response.read()
    events = [event.removeprefix(b"data: ") for event in raw.split(b"\n\n") if event]
    return response.headers["x-request-id"], events


def test_a_burst_arrives_as_one_event_per_token_in_order_with_usage_last(live_gateway, tenant, deploy,
                                                                         bursting_worker_url):
    deploy(MINI, [bursting_worker_url])

    request_id, events = sse_events(live_gateway, tenant, "hello")

    assert events[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert contents == TOKENS  # each token once, in order
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(TOKENS)
    # The content chunks (rendered from a template) are what pydantic renders for the same chunk.
    for event, chunk in zip(events[1:1 + len(TOKENS)], chunks[1:1 + len(TOKENS)]):
        assert event == chunk.model_dump_json().encode()
    row = usage_row(request_id)
    assert row.output_tokens == len(TOKENS)


def test_an_error_inside_a_burst_comes_after_the_tokens_before_it(live_gateway, tenant, deploy, bursting_worker_url):
    deploy(MINI, [bursting_worker_url])

    _, events = sse_events(live_gateway, tenant, "fail midway")

    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events
                if e.startswith(b"{") and json.loads(e).get("choices")]
    assert [c for c in contents if c] == TOKENS[:3]
    error = json.loads(next(e for e in events if b'"error"' in e))
    assert "worker fell over" in error["error"]["message"]
