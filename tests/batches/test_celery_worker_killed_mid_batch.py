"""A batch on a real Celery worker (Redis broker, a separate process): the worker is killed mid-batch, a new
one resumes the batch, and every custom_id is answered once with no line billed twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from celery import Celery
from django.db import connection

from batches import services
from batches.models import Batch, BatchLine
from metering.models import UsageRecord

from .conftest import chat_line, results, run_batch, wait_for_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle_batches")]

ROOT = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class CeleryWorker:
    """``celery -A tollgate worker`` on this session's test database, one line at a time."""

    def __init__(self, name: str):
        settings = connection.settings_dict
        database = f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
        env = dict(os.environ, DATABASE_URL=database, CELERY_BROKER_URL=BROKER, TOLLGATE_BATCH_CONCURRENCY="1",
                   TOLLGATE_CPU_ENGINE_THREADS="1", TOLLGATE_SPANS_TO_CLICKHOUSE="false")
        self.log = open(f"/tmp/tollgate-celery-{name}-{os.getpid()}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tollgate", "worker", "--pool=solo", "-n", f"{name}@%h",
             "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture
def broker():
    app = Celery(broker=BROKER)
    app.control.purge()
    yield app
    app.control.purge()


def test_a_worker_killed_mid_batch_is_resumed_by_another_without_double_billing(openai_client, broker,
                                                                                monkeypatch):
    monkeypatch.setattr(services, "start_batch", lambda batch_id: None)  # the task goes to the broker below
    lines = [chat_line(f"w{i}", f"Line number {i}, please.", max_tokens=24) for i in range(12)]
    created = run_batch(openai_client, lines)
    broker.send_task("batches.run_batch", args=[created.id])

    first = CeleryWorker("first")
    try:
        wait_until(lambda: Batch.objects.get(pk=created.id).request_completed >= 3)
        first.kill()  # SIGKILL mid-batch: no clean-up runs
    finally:
        first.kill()
    assert Batch.objects.get(pk=created.id).status == Batch.Status.IN_PROGRESS
    assert BatchLine.objects.filter(batch_id=created.id, status=BatchLine.Status.PENDING).exists()

    second = CeleryWorker("second")
    try:
        broker.send_task("batches.run_batch", args=[created.id])  # the redelivery (or resume_batches)
        batch = wait_for_end(openai_client, created.id, timeout=180)
    finally:
        second.kill()

    assert batch.status == "completed" and batch.request_counts.total == 12
    answered = results(openai_client, batch.output_file_id)
    interrupted = results(openai_client, batch.error_file_id)
    assert set(answered) | set(interrupted) == {f"w{i}" for i in range(12)} and not set(answered) & set(interrupted)
    assert all(line["error"]["code"] == "line_interrupted" for line in interrupted.values())
    billed = Counter(UsageRecord.objects.filter(batch_id=created.id, status="ok").values_list("request_id",
                                                                                               flat=True))
    assert max(billed.values()) == 1  # no line billed twice
    assert len(billed) == 12  # every line billed once (an interrupted line was billed before the kill)
