"""An OpenAI-compatible upstream that answers instantly: the baseline for gateway-overhead benchmarks.

Raw ASGI on uvicorn, pre-encoded bodies. POST /v1/chat/completions answers a
fixed 5-token completion (JSON, or SSE when "stream" is true, with usage in
every chunk as vLLM's continuous_usage_stats does); GET /health and
/metrics answer empty. Nothing is computed, so what a client measures through
a proxy is the proxy.

With ``--stream-tokens N`` a streamed answer is N tokens instead, in vLLM's
shape and one write per chunk, as a GPU worker sends them: a role chunk, one
content chunk per token, the finish chunk, a usage chunk when
``stream_options.include_usage`` (usage in every chunk too when
``continuous_usage_stats``), then ``[DONE]``. The chunks are rendered once at
start; each send is one ASGI message, so the client (or proxy) reads as fast
as it can.

    .venv/bin/python bench/instant_upstream.py --port 8300
    .venv/bin/python bench/instant_upstream.py --port 8300 --stream-tokens 256
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
PROMPT_TOKENS = 12


def token_stream(tokens: int, continuous_usage: bool, include_usage: bool) -> list[bytes]:
    """The SSE events of a ``tokens``-token streamed answer, one element per write (``token0 token1 ...``)."""
    def running(n: int) -> dict | None:
        if not continuous_usage:
            return None
        return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}

    events = [_chunk({"role": "assistant", "content": ""}, None, running(0))]
    events += [_chunk({"content": f" token{i}"}, None, running(i + 1)) for i in range(tokens)]
    events.append(_chunk({}, "length", running(tokens)))
    if include_usage:
        final = dict(running(tokens) or {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": tokens,
                                         "total_tokens": PROMPT_TOKENS + tokens},
                     prompt_tokens_details={"cached_tokens": 0})
        events.append(_chunk({}, None, final, choices=False))
    events.append(b"data: [DONE]\n\n")
    return events


# --stream-tokens: the four shapes (continuous usage, final usage) rendered once at start.
STREAMS: dict[tuple[bool, bool], list[bytes]] = {}
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
        if stream and STREAMS:
            options = json.loads(body).get("stream_options") or {}
            events = STREAMS[(bool(options.get("continuous_usage_stats")), bool(options.get("include_usage")))]
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
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
    ap.add_argument("--stream-tokens", type=int, default=0,
                    help="stream N tokens, one chunk and one write per token (0: the fixed 5-token SSE)")
    args = ap.parse_args()
    if args.stream_tokens:
        STREAMS.update({(c, u): token_stream(args.stream_tokens, c, u) for c in (False, True) for u in (False, True)})
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
