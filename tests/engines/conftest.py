"""Real engine worker processes (`manage.py serve_engine --engine cpu`) on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from metering.models import UsageRecord
from serving import pools
from serving.models import Deployment, Pool, Replica

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MINI = "tollgate-mini"


class WorkerProcess:
    def __init__(self, *extra: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "WorkerProcess":
        self.spawn()
        return self.wait_healthy(timeout)

    def spawn(self) -> "WorkerProcess":
        env = dict(os.environ, TOLLGATE_CPU_ENGINE_THREADS="1", UVICORN_LOG_LEVEL="warning")
        self.log = open(f"/tmp/tollgate-worker-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve_engine", "--engine", "cpu", "--host", "127.0.0.1",
             "--port", str(self.port), "--models", MINI, "--preload", *self.extra],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        return self

    def wait_healthy(self, timeout: float = 90.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("worker did not become healthy")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def metrics(self) -> dict[str, float]:
        from serving.engines.remote import read_engine_metrics

        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        values = read_engine_metrics(text)
        for line in text.splitlines():
            if line.startswith("tollgate:engine_busy_seconds_total"):
                values["busy_seconds"] = float(line.rsplit(" ", 1)[1])
        return values


def start_all(*workers: WorkerProcess) -> tuple[WorkerProcess, ...]:
    """Start several workers at once (each spends seconds importing torch and building its model)."""
    for w in workers:
        w.spawn()
    try:
        for w in workers:
            w.wait_healthy()
    except BaseException:
        for w in workers:
            w.kill()
        raise
    return workers


@pytest.fixture(scope="module")
def worker():
    w = WorkerProcess("--embeddings").start()
    yield w
    w.kill()


@pytest.fixture
def deploy(db):
    """Put a model in a pool with the given replicas (URLs; "" = in-process) and make the gateway see it now."""

    def make(model: str, urls: list[str], pool: str = "interactive", kind: str = "interactive", **pool_fields):
        p, _ = Pool.objects.update_or_create(name=pool, defaults={"kind": kind, **pool_fields})
        d = Deployment.objects.create(model=model, pool=p)
        for url in urls:
            Replica.objects.create(deployment=d, url=url)
        return pools.reload_pools()

    yield make
    Replica.objects.all().delete()
    Deployment.objects.all().delete()
    Pool.objects.all().delete()
    pools.reload_pools()


def usage_row(request_id: str, timeout: float = 10.0) -> UsageRecord:
    """The row of the attempt that answered (a request's failed tries have rows of their own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UsageRecord.objects.filter(request_id=request_id).exclude(status=UsageRecord.Status.ERROR).first()
        if row is not None:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


@contextmanager
def asgi_worker(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve a raw ASGI app (a stand-in worker) on uvicorn in a thread; its base URL, by ``host``."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="asgi-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
