"""The gateway's connections to its workers are shared by every tenant, so nothing one worker answer sets
may ride along on the next request: a cookie a worker (or a proxy in front of it) sets is not sent back.

The worker here is a raw ASGI app on uvicorn that sets a cookie on every answer and notes the Cookie
header of every request it gets.
"""

from __future__ import annotations

import openai
import pytest

from .conftest import MINI, asgi_worker

pytestmark = pytest.mark.django_db(transaction=True)

received_cookies: list[str | None] = []


def _event(text: str) -> bytes:
    return b"data: " + text.encode() + b"\n\n"


ANSWER = b"".join([
    _event('{"id":"c","object":"chat.completion.chunk","created":1,"model":"%s","choices":[{"index":0,'
           '"delta":{"role":"assistant","content":"hi"},"finish_reason":null}],'
           '"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}' % MINI),
    _event('{"id":"c","object":"chat.completion.chunk","created":1,"model":"%s","choices":[{"index":0,'
           '"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,'
           '"total_tokens":4}}' % MINI),
    _event("[DONE]"),
])


async def cookie_setting_worker(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"].endswith("/chat/completions"):
        received_cookies.append(dict(scope["headers"]).get(b"cookie", b"").decode() or None)
        headers = [(b"content-type", b"text/event-stream"),
                   (b"set-cookie", f"session=answer-{len(received_cookies)}; Path=/".encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def cookie_worker_url():
    # By name, as workers are addressed in a cluster (a client's cookie jar may refuse cookies from a bare IP).
    with asgi_worker(cookie_setting_worker, host="localhost") as url:
        yield url


def test_a_cookie_set_by_a_worker_is_never_sent_with_the_next_request(live_gateway, make_tenant, catalog, deploy,
                                                                     cookie_worker_url):
    deploy(MINI, [cookie_worker_url])
    received_cookies.clear()
    for slug in ("acme", "globex", "acme2"):
        tenant = make_tenant(slug)
        client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0, timeout=30)
        answer = client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hello"}],
                                                max_tokens=4)
        assert answer.choices[0].message.content == "hi"
    assert received_cookies == [None, None, None]
