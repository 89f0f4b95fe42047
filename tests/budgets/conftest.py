"""Budget test helpers: a real HTTP webhook receiver on 127.0.0.1, waiting for background work, money math."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class WebhookReceiver:
    """Records every POST (headers and raw body) and answers with `status`."""

    def __init__(self):
        self.status = 200
        self.requests: list[tuple[dict, bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tollgate-alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()

    def payloads(self) -> list[dict]:
        with self._lock:
            return [json.loads(body) for _, body in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05):
    """Poll until condition() is truthy (background alert delivery); fail with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def worst_case(entry, prompt_tokens: int, max_tokens: int) -> Decimal:
    from metering.pricing import cost_of_tokens

    return cost_of_tokens(entry, input_tokens=prompt_tokens, output_tokens=max_tokens).total


@pytest.fixture(autouse=True)
def _fresh_budget_cache():
    """Forecast checks and stale sweeps are rate-limited through the cache; each test starts clean."""
    from django.core.cache import cache

    cache.clear()
    yield
