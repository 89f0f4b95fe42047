"""`make run`'s path on embedded defaults: SQLite + chDB, seed, serve, one real request.

Runs the same management commands `make run` runs, in child processes with
their own SQLite file and chDB folder, so nothing here touches PostgreSQL.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port
from tests.servers import wait_until_serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def embedded_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CLICKHOUSE_DSN",
                                                            "TOLLGATE_INPROCESS_SHIPPER", "TOLLGATE_VAR_DIR",
                                                            "DJANGO_SETTINGS_MODULE"}}
    env.update({"TOLLGATE_VAR_DIR": str(tmp_path / "var"), "TOLLGATE_SHIP_INTERVAL_S": "0.5"})
    return env


def manage(env, *args, timeout=300):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=True)


def test_seed_is_idempotent_and_the_server_answers_with_the_demo_key(embedded_env, tmp_path):
    manage(embedded_env, "migrate", "--noinput", "-v0")
    first = manage(embedded_env, "seed_demo").stdout
    second = manage(embedded_env, "seed_demo").stdout
    key = re.search(r"API key \(acme\):\s+(\S+)", first).group(1)
    assert re.search(r"API key \(acme\):\s+(\S+)", second).group(1) == key  # same demo key, nothing duplicated
    assert "Seeded 400 demo requests" in first and "Seeded" not in second
    assert (tmp_path / "var" / "tollgate.sqlite3").exists()

    port = free_port()
    server = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT,
                              env=embedded_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, server)

        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        completion = client.chat.completions.create(model="tollgate-mini", max_tokens=5,
                                                    messages=[{"role": "user", "content": "hi"}])
        assert completion.usage.completion_tokens >= 1

        # The in-process shipper moves the ledger (400 seeded + 1) into chDB; the
        # manager's dashboard reads it from there.
        with httpx.Client(base_url=base, follow_redirects=True) as browser:
            login = browser.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
            browser.post("/accounts/login/", data={"username": "alice", "password": "tollgate-demo",
                                                   "csrfmiddlewaretoken": token, "next": "/dashboards/"})
            deadline = time.monotonic() + 30
            while True:
                page = browser.get("/dashboards/acme/")
                assert page.status_code == 200
                shown = re.search(r'data-testid="total-requests"[^>]*>([\d,]+)<', page.text).group(1)
                requests = int(shown.replace(",", ""))
                if requests == 201:  # 200 seeded for acme (of 400 across two orgs) + ours
                    break
                assert time.monotonic() < deadline, f"dashboard shows {requests} requests"
                time.sleep(0.5)
            assert browser.get("/dashboards/globex/").status_code == 404
    finally:
        server.terminate()
        server.wait(15)
