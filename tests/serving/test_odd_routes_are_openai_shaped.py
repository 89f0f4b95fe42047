"""Whatever method or path reaches /v1, the answer is OpenAI's error shape, and a 405 says what is allowed."""

import socket

import httpx
import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def raw_request(port: int, request_line: str) -> tuple[int, dict, bytes]:
    """One request written by hand, for what clients will not send (a raw newline escape in the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"{request_line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/v1/chat/completions", "POST"),
    ("TRACE", "/v1/chat/completions", "POST"),
    ("DELETE", "/v1/embeddings", "POST"),
    ("POST", "/v1/models", "GET"),
    ("PUT", "/v1/models/tollgate-mini", "GET"),
])
def test_a_wrong_method_is_an_openai_405_with_allow(live_gateway, tenant, method, path, allow):
    response = httpx.request(method, live_gateway.url + path, headers={"Authorization": f"Bearer {tenant.plaintext}"})
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("request_line", [
    "GET /v1/foo%0Abar HTTP/1.1",
    "TRACE /v1/foo%0D%0Abar HTTP/1.1",
    "POST /v1/chat/completions/%0A HTTP/1.1",
])
def test_a_path_no_route_matches_is_an_openai_404(live_gateway, request_line):
    status, headers, body = raw_request(live_gateway.port, request_line)
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    assert b'"code": "not_found"' in body
