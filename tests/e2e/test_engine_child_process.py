"""`manage.py serve` with TOLLGATE_CPU_ENGINE_PROCESS=separate runs the CPU engine as its own child worker
process and reaches it over HTTP.

Real processes on embedded defaults (SQLite, chDB in a temp var dir), as tests/e2e/test_embedded_default.py.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port
from tests.servers import wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
CHILD_LINE = re.compile(r"CPU engine worker \(pid (\d+)\) on (http://127\.0\.0\.1:\d+)")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    var = tmp_path_factory.mktemp("engine-child") / "var"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CLICKHOUSE_DSN",
                                                            "TOLLGATE_INPROCESS_SHIPPER", "TOLLGATE_VAR_DIR",
                                                            "DJANGO_SETTINGS_MODULE", "TOLLGATE_CPU_ENGINE_URL",
                                                            "TOLLGATE_CPU_ENGINE_PROCESS"}}
    env.update({"TOLLGATE_VAR_DIR": str(var), "TOLLGATE_SPANS_TO_CLICKHOUSE": "false",
                "TOLLGATE_CPU_ENGINE_PROCESS": "separate",
                "TOLLGATE_HEALTH_CHECK_INTERVAL_S": "0.5", "UVICORN_LOG_LEVEL": "warning"})
    run = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], **run)
    out = subprocess.run([sys.executable, "manage.py", "seed_demo"], **run).stdout
    return env, re.search(r"API key \(acme\):\s+(\S+)", out).group(1)


class Server:
    """`manage.py serve` with its output collected line by line (the child's lines come through it)."""

    def __init__(self, env):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.process = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(self.port)], cwd=ROOT,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        wait_until_serving(self.base, self.process, timeout_s=120, output=lambda: self.output)

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def child(self) -> tuple[int, str]:
        found = CHILD_LINE.search(self.output)
        assert found, self.output
        return int(found.group(1)), found.group(2)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A dead child not yet reaped by its parent is a zombie: gone all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_for(check, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def generated_tokens(worker_url: str) -> float:
    text = httpx.get(f"{worker_url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^vllm:generation_tokens(?:_total)?(?:\{[^}]*\})? (\S+)$", text, re.M))


def test_the_embedded_default_answers_chat_and_embeddings_through_its_child_worker(seeded):
    env, key = seeded
    server = Server(env)
    try:
        pid, worker = server.child()
        assert pid != server.process.pid and alive(pid)
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0)
        before = generated_tokens(worker)
        completion = client.chat.completions.create(model="tollgate-mini", max_tokens=6, temperature=1.0,
                                                    messages=[{"role": "user", "content": "hello child"}])
        assert completion.usage.completion_tokens >= 1
        # The tokens were generated in the child: its own counters moved by what the gateway billed.
        assert generated_tokens(worker) - before == completion.usage.completion_tokens
        vectors = client.embeddings.create(model="all-minilm-l6-v2", input=["one", "two"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
        assert "[cpu-engine] CPU engine worker for" in server.output  # the child's own lines, prefixed
        # The gateway still refuses what the CPU engine cannot honour, before it reaches the worker.
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tollgate-mini", max_tokens=3, frequency_penalty=0.5,
                                           messages=[{"role": "user", "content": "hi"}])
        assert refused.value.body["param"] == "frequency_penalty"
    finally:
        server.stop()
    # The child ends with the server.
    wait_for(lambda: not alive(pid), "the CPU engine worker outlived serve", 20)


def test_the_child_dies_with_a_killed_server(seeded):
    env, _ = seeded
    server = Server(env)
    pid, _ = server.child()
    server.process.kill()  # no clean-up runs: the kernel's parent-death signal ends the child
    server.process.wait(10)
    wait_for(lambda: not alive(pid), "the CPU engine worker outlived a killed serve", 20)


def test_a_crashed_child_gives_503s_that_say_so_and_is_started_again(seeded):
    env, key = seeded
    server = Server(env)
    try:
        pid, worker = server.child()
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), "the child did not die")
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="tollgate-mini", max_tokens=4,
                                           messages=[{"role": "user", "content": "anyone there?"}])
        assert failed.value.status_code == 503
        assert worker in failed.value.message  # names the worker that does not answer

        # Started again on the same port; the health checks put it back and requests succeed.
        wait_for(lambda: server.output.count("[cpu-engine] CPU engine worker for") >= 2,
                 "the child was not started again:\n" + server.output)

        def answers() -> bool:
            try:
                return client.chat.completions.create(
                    model="tollgate-mini", max_tokens=4,
                    messages=[{"role": "user", "content": "back?"}]).usage.completion_tokens >= 1
            except openai.APIStatusError as exc:
                assert exc.status_code == 503, exc
                return False

        wait_for(answers, "the gateway did not use the restarted child")
    finally:
        server.stop()
