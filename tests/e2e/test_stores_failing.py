"""Fault injection over real processes: PostgreSQL and Redis go away under the gateway, then come back.

A real `manage.py serve` process talks to the real PostgreSQL and Redis through
TCP proxies (tests/faults.py) that the test takes down and brings up; its
engine is the instant upstream from bench/ (it stands in for a GPU worker).
For each store: the documented behaviour happens (docs/operations.md, "When a
store is down"), nothing is answered with a 500, nothing answered goes
unrecorded or is billed twice, and service recovers by itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import free_port
from tests.faults import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
MODEL = "bench-echo"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}

SEED = f"""
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from budgets.models import Budget
from metering.models import CatalogModel, Price
from serving.models import Deployment, Pool, Replica
from tenants.models import Feature, Organization
from tenants.services import issue_api_key

model = CatalogModel.objects.create(name="{MODEL}", tier=1, context_window=2048)
Price.objects.create(model=model, effective_from=timezone.now() - timedelta(days=1), input_per_mtok=Decimal("1"),
                     cached_input_per_mtok=Decimal("0.1"), output_per_mtok=Decimal("2"))
deployment = Deployment.objects.create(model="{MODEL}", pool=Pool.objects.create(name="interactive"))
Replica.objects.create(deployment=deployment, url="{{upstream}}")
org = Organization.objects.create(slug="faults", name="Faults")
Budget.objects.create(organization=org, amount=Decimal("1000"))
print("KEY=" + issue_api_key(org, "k", default_feature=Feature.objects.create(organization=org, slug="f")).plaintext)
"""


def _server_parts() -> tuple[str, str]:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tollgate")
    return url.rsplit("/", 1)[0], os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


class Stack:
    """The gateway process and its store proxies."""

    def __init__(self, tmp: str):
        base, redis_url = _server_parts()
        host_port = base.rsplit("@", 1)[-1]
        self.admin_url = base + "/postgres"
        self.db_name = f"tg_faults_{uuid.uuid4().hex[:8]}"
        self.direct_db_url = f"{base}/{self.db_name}"
        self.pg = TcpProxy(int(host_port.rsplit(":", 1)[1])).start()
        redis_host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        self.redis = TcpProxy(int(redis_host_port.rsplit(":", 1)[1])).start()
        self.procs: list[subprocess.Popen] = []
        up_port = free_port()
        self.procs.append(subprocess.Popen([sys.executable, "bench/instant_upstream.py", "--port", str(up_port)],
                                           cwd=ROOT))
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.env = dict(os.environ, DATABASE_URL=f"{base.rsplit('@', 1)[0]}@127.0.0.1:{self.pg.port}/{self.db_name}",
                        REDIS_URL=f"redis://127.0.0.1:{self.redis.port}/12", DATABASE_POOL_TIMEOUT_S="2",
                        CLICKHOUSE_DSN=f"chdb:///{tmp}/ch", TOLLGATE_VAR_DIR=f"{tmp}/var", TOLLGATE_ENGINE="none",
                        TOLLGATE_EMBEDDINGS_IN_PROCESS="false", TOLLGATE_INPROCESS_SHIPPER="true",
                        TOLLGATE_CONFIG_CACHE_TTL_S="1", UVICORN_LOG_LEVEL="warning", DEBUG="false")
        self.env.pop("CELERY_BROKER_URL", None)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=self.env, check=True)
        seeded = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                                 SEED.format(upstream=f"http://127.0.0.1:{up_port}")],
                                cwd=ROOT, env=self.env, check=True, capture_output=True, text=True).stdout
        self.key = next(line[4:] for line in seeded.splitlines() if line.startswith("KEY="))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(f"{tmp}/gateway.log", "wb")
        self.procs.append(subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(self.port)],
                                           cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.chat().status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"gateway did not come up; see {self.log.name}")

    def chat(self, **headers) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", json=BODY, timeout=30,
                          headers={"Authorization": f"Bearer {self.key}", **headers})

    def ledger(self) -> list[tuple]:
        with psycopg.connect(self.direct_db_url) as conn:
            return conn.execute("SELECT request_id, status, cost_total FROM metering_usagerecord").fetchall()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.pg.stop(), self.redis.stop()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack():
    with tempfile.TemporaryDirectory(prefix="tollgate-faults-") as tmp:
        s = Stack(tmp)
        try:
            yield s
        finally:
            s.close()


def _until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("did not recover in time")


def _answered(stack: Stack) -> httpx.Response | None:
    response = stack.chat()
    return response if response.status_code == 200 else None


def _all_answered(stack: Stack) -> list[httpx.Response] | None:
    """Answers to requests spread over more than the memos' TTL (1 s here), or None: recovered means for a
    request that reads its key from the database too. The hot path's transactions (core/db.py's async pool)
    and the ORM (Django's pool) reconnect each on its own, with psycopg's backoff, so the first answer after
    an outage may come while the ORM's pool is still reconnecting."""
    answers = []
    for _ in range(4):
        response = _answered(stack)
        if response is None:
            return None
        answers.append(response)
        time.sleep(0.4)
    return answers


def test_postgresql_down_fails_closed_with_503_and_service_recovers_by_itself(stack):
    answered = [stack.chat() for _ in range(3)]
    assert [r.status_code for r in answered] == [200, 200, 200]

    stack.pg.down()
    try:
        time.sleep(1.2)  # past the key memo: authentication must reach the database too
        refused = [stack.chat() for _ in range(3)]
    finally:
        stack.pg.up()
    for response in refused:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "store_unavailable"
        assert response.headers["retry-after"]

    answered.extend(_until(lambda: _all_answered(stack), timeout=90))
    rows = stack.ledger()
    billed = {request_id for request_id, status, _ in rows if status == "ok"}
    assert {r.headers["x-request-id"] for r in answered} <= billed  # every answer is in the ledger once
    assert len([row for row in rows if row[0] in billed and row[1] == "ok"]) == len(billed)
    assert not {r.headers["x-request-id"] for r in refused} & billed


def test_redis_down_serves_plain_requests_refuses_idempotent_ones_and_recovers(stack):
    stack.redis.down()
    try:
        plain = stack.chat()
        cacheable = httpx.post(f"{stack.url}/v1/chat/completions", json={**BODY, "temperature": 0}, timeout=30,
                               headers={"Authorization": f"Bearer {stack.key}"})
        keyed = stack.chat(**{"Idempotency-Key": f"k-{uuid.uuid4()}"})
    finally:
        stack.redis.up()

    assert plain.status_code == 200  # rate limits fail open
    assert cacheable.status_code == 200 and cacheable.headers["x-tollgate-cache"] == "bypass"  # so does the cache
    assert keyed.status_code == 503 and keyed.json()["error"]["code"] == "store_unavailable"
    key = f"k-{uuid.uuid4()}"
    first = _until(lambda: (r := stack.chat(**{"Idempotency-Key": key})).status_code == 200 and r)
    again = stack.chat(**{"Idempotency-Key": key})
    assert again.headers.get("idempotent-replayed") == "true" and again.json()["id"] == first.json()["id"]
