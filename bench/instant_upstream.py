"""An OpenAI-compatible upstream that answers instantly: the baseline for gateway-overhead benchmarks.

Raw ASGI on uvicorn, pre-encoded bodies. POST /v1/chat/completions answers a
fixed 5-token completion (JSON, or SSE when "stream" is true, with usage in
every chunk as vLLM's continuous_usage_stats does); GET /health and
/metrics answer empty. Nothing is computed, so what a client measures through
a proxy is the proxy.

    .venv/bin/python bench/instant_upstream.py --port 8300
"""

from __future__ import annotations

import argparse
import json

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 0}}
BODY = json.dumps({
    "id": "chatcmpl-instant", "object": "chat.completion", "created": 1700000000, "model": "bench-echo",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three four five"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": USAGE,
}).encode()


def _chunk(delta: dict, finish: str | None, usage: dict | None, choices: bool = True) -> bytes:
    body = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "bench-echo",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


SSE = b"".join([
    _chunk({"role": "assistant", "content": ""}, None, dict(USAGE, completion_tokens=0, total_tokens=12)),
    _chunk({"content": "one two three four five"}, None, USAGE),
    _chunk({}, "stop", USAGE),
    _chunk({}, None, USAGE, choices=False),
    b"data: [DONE]\n\n",
])
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST" and scope["path"].endswith("/chat/completions"):
        stream = b'"stream": true' in body or b'"stream":true' in body
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS if stream else JSON_HEADERS})
        await send({"type": "http.response.body", "body": SSE if stream else BODY})
        return
    if scope["path"] == "/v1/models":
        models = json.dumps({"object": "list", "data": [{"id": "bench-echo", "object": "model"}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": models})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8300)
    args = ap.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
