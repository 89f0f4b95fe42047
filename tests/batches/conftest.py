"""Helpers for the Batch API tests: JSONL input files and waiting for a batch to end."""

from __future__ import annotations

import json
import time

import pytest

FINAL = {"completed", "failed", "expired", "cancelled"}


def jsonl(lines: list[dict]) -> bytes:
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def chat_line(custom_id: str, content: str = "Say hello.", model: str = "tollgate-mini", max_tokens: int = 5) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                     "temperature": 0}}


def upload(client, lines: list[dict]):
    return client.files.create(file=("input.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")


def run_batch(client, lines: list[dict], endpoint: str = "/v1/chat/completions"):
    source = upload(client, lines)
    return client.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h")


def wait_for_end(client, batch_id: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not end in {timeout} s")


def results(client, file_id: str | None) -> dict[str, dict]:
    """custom_id -> its line of an output or error file."""
    if file_id is None:
        return {}
    out = {}
    for raw in client.files.content(file_id).text.splitlines():
        line = json.loads(raw)
        assert line["custom_id"] not in out, "a custom_id answered twice"
        out[line["custom_id"]] = line
    return out


@pytest.fixture
def settle_batches():
    """Batches started by a test run on threads of this process: none may still run when the test's data goes."""
    yield
    from batches.models import Batch

    deadline = time.monotonic() + 60
    while Batch.objects.exclude(status__in=FINAL).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
