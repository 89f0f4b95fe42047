"""On the embedded default (no Redis, no broker, no beat) the web process's own sampler thread samples the
pools and runs the recommendation: /metrics of a real `manage.py serve` shows the pool's signals and the
desired replicas for the demo's policy, and the policy row keeps the latest decision."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from tests.conftest import free_port
from tests.servers import wait_until_serving

ROOT = Path(__file__).resolve().parents[2]


def test_the_embedded_server_samples_its_pools_and_recommends(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CLICKHOUSE_DSN",
                                                            "TOLLGATE_INPROCESS_SHIPPER", "TOLLGATE_VAR_DIR",
                                                            "DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL"}}
    env.update({"TOLLGATE_VAR_DIR": str(tmp_path / "var"), "TOLLGATE_AUTOSCALE_SAMPLE_S": "0.5",
                "TOLLGATE_AUTOSCALE_INTERVAL_S": "1", "TOLLGATE_SPANS_TO_CLICKHOUSE": "false",
                "UVICORN_LOG_LEVEL": "warning"})

    def manage(*args):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300, check=True)

    manage("migrate", "--noinput", "-v0")
    key = re.search(r"API key \(acme\):\s+(\S+)", manage("seed_demo").stdout).group(1)
    port = free_port()
    server = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, server)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        client.chat.completions.create(model="tollgate-mini", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])

        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(f"{base}/metrics", timeout=10).text
            desired = re.search(r'^tollgate_pool_desired_replicas\{pool="interactive"\} (\S+)$', text, re.M)
            ready = re.search(r'^tollgate_pool_replicas\{pool="interactive"\} (\S+)$', text, re.M)
            if desired and ready:
                break
            assert time.monotonic() < deadline, "no autoscaling gauges on /metrics:\n" + text[-2000:]
            time.sleep(0.5)
        assert float(ready.group(1)) == 1  # the in-process CPU engine
        assert 1 <= float(desired.group(1)) <= 4  # the demo policy's bounds
    finally:
        server.terminate()
        server.wait(15)
    out = manage("shell", "-c", "from autoscaling.models import PoolScaling; "
                                "p = PoolScaling.objects.get(pool='interactive'); "
                                "print(p.decided_at, '|', p.last_reason)")
    assert "load" in out.stdout and "None" not in out.stdout.split("|")[0]
