"""No body of any shape produces a 5xx: each gets a 400 in OpenAI's error shape, nothing is billed, and the
connection it came on stays open for the next request."""

import http.client
import json
import socket

import pytest

from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

GOOD_CHAT = json.dumps({"model": "tollgate-mini", "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 2}).encode()
GOOD_EMBEDDINGS = json.dumps({"model": "all-minilm-l6-v2", "input": "hi"}).encode()


def chat(**fields) -> bytes:
    body = {"model": "tollgate-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


def deeply_nested(depth: int) -> bytes:
    return b'{"model": "tollgate-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + \
        b"[" * depth + b"]" * depth + b"}"


CHAT_BODIES = {
    "role is an object": chat(messages=[{"role": {"name": "user"}, "content": "hi"}]),
    "role is an array": chat(messages=[{"role": ["user"], "content": "hi"}]),
    "integer of 5000 digits": b'{"model": "tollgate-mini", "messages": [{"role": "user", "content": "hi"}], '
                              b'"max_tokens": ' + b"9" * 5000 + b"}",
    "integer of 400 digits": b'{"model": "tollgate-mini", "messages": [{"role": "user", "content": "hi"}], '
                             b'"seed": ' + b"9" * 400 + b"}",
    "JSON nested 5000 deep": deeply_nested(5000),
    "lone surrogate in a message": b'{"model": "tollgate-mini", "messages": [{"role": "user", '
                                   b'"content": "hi \\ud800 there"}]}',
    "lone surrogate as the model": b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}',
    "raw bytes that are not UTF-8": b'{"model": "tollgate-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "float past double range": chat()[:-1] + b', "temperature": 1e400}',
    "NaN": chat()[:-1] + b', "temperature": NaN}',
    "top level array": b"[1, 2, 3]",
    "top level string": b'"hello"',
    "empty body": b"",
    "messages is a string": chat(messages="hello"),
    "content is an object": chat(messages=[{"role": "user", "content": {"text": "hi"}}]),
    "stream is a string": chat(stream="yes"),
    "stop has five strings": chat(stop=["a", "b", "c", "d", "e"]),
    "an argument OpenAI does not define": chat(temprature=0.5),
    "null bytes": b"\x00" * 64,
}

EMBEDDINGS_BODIES = {
    "lone surrogate in the input": b'{"model": "all-minilm-l6-v2", "input": "a \\ud83d b"}',
    "input of token ids": json.dumps({"model": "all-minilm-l6-v2", "input": [1, 2, 3]}).encode(),
    "input is an object": json.dumps({"model": "all-minilm-l6-v2", "input": {"text": "hi"}}).encode(),
    "empty string input": json.dumps({"model": "all-minilm-l6-v2", "input": ""}).encode(),
    "model is a number": json.dumps({"model": 7, "input": "hi"}).encode(),
    "input nested 5000 deep": b'{"model": "all-minilm-l6-v2", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
}


@pytest.fixture
def connection(live_gateway):
    conn = http.client.HTTPConnection("127.0.0.1", live_gateway.port, timeout=60)
    yield conn
    conn.close()


def post(conn: http.client.HTTPConnection, path: str, body: bytes, key: str) -> tuple[int, dict, dict]:
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {key}",
                                                    "Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    return response.status, dict(response.getheaders()), json.loads(payload)


def assert_openai_400(status: int, body: dict):
    assert status == 400, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]


def assert_same_connection_still_works(conn, socket_before, path: str, good: bytes, key: str):
    status, _, body = post(conn, path, good, key)
    assert status == 200, body
    assert conn.sock is socket_before  # the server kept the connection: the client did not have to reconnect


@pytest.mark.parametrize("body", CHAT_BODIES.values(), ids=CHAT_BODIES.keys())
def test_bad_chat_body_is_a_400_and_the_connection_stays_usable(connection, tenant, body):
    status, headers, payload = post(connection, "/v1/chat/completions", body, tenant.plaintext)
    assert_openai_400(status, payload)
    assert headers.get("X-Request-Id") or headers.get("x-request-id")
    socket_before = connection.sock
    assert socket_before is not None
    assert_same_connection_still_works(connection, socket_before, "/v1/chat/completions", GOOD_CHAT,
                                       tenant.plaintext)
    assert UsageRecord.objects.filter(cost_total__gt=0).count() == 1  # the good request alone


@pytest.mark.parametrize("body", EMBEDDINGS_BODIES.values(), ids=EMBEDDINGS_BODIES.keys())
def test_bad_embeddings_body_is_a_400_and_the_connection_stays_usable(connection, tenant, body):
    status, _, payload = post(connection, "/v1/embeddings", body, tenant.plaintext)
    assert_openai_400(status, payload)
    socket_before = connection.sock
    assert_same_connection_still_works(connection, socket_before, "/v1/embeddings", GOOD_EMBEDDINGS,
                                       tenant.plaintext)
    assert UsageRecord.objects.count() == 1


def test_bad_bodies_name_the_parameter(connection, tenant):
    cases = {
        "messages.[0].role": CHAT_BODIES["role is an object"],
        "max_tokens": CHAT_BODIES["integer of 400 digits"].replace(b'"seed"', b'"max_tokens"'),
        "seed": CHAT_BODIES["integer of 400 digits"],
        "temprature": CHAT_BODIES["an argument OpenAI does not define"],
        "stop": CHAT_BODIES["stop has five strings"],
    }
    for param, body in cases.items():
        status, _, payload = post(connection, "/v1/chat/completions", body, tenant.plaintext)
        assert_openai_400(status, payload)
        assert payload["error"]["param"] == param, payload


ODD_HEADERS = {
    "feature of 10,000 characters": {"X-Feature": "a" * 10_000},
    "feature in latin-1": {"X-Feature": "caf\xe9"},
    "feature with a NUL": {"X-Feature": "chat\x00"},
    "key with a NUL": {"Authorization": "Bearer tg-abcdefgh-\x00secret"},
    "key of high bytes": {"Authorization": "Bearer tg-" + "\xff" * 40},
    "no bearer scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "quality of 10,000 characters": {"X-Quality": "h" * 10_000},
}


@pytest.mark.parametrize("headers", ODD_HEADERS.values(), ids=ODD_HEADERS.keys())
def test_odd_headers_are_refused_without_a_5xx(live_gateway, tenant, headers):
    sock = socket.create_connection(("127.0.0.1", live_gateway.port), timeout=30)
    try:
        lines = {"Host": "127.0.0.1", "Authorization": f"Bearer {tenant.plaintext}",
                 "Content-Type": "application/json", "Content-Length": str(len(GOOD_CHAT)), **headers}
        head = "POST /v1/chat/completions HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items())
        sock.sendall(head.encode("latin-1") + b"\r\n" + GOOD_CHAT)
        status_line = sock.makefile("rb").readline()
    finally:
        sock.close()
    status = int(status_line.split()[1])
    assert status < 500, status_line
    assert UsageRecord.objects.filter(cost_total__gt=0).count() == (1 if status == 200 else 0)
