"""The CPU engine as a child process of ``manage.py serve`` (TOLLGATE_CPU_ENGINE_PROCESS=separate).

Why a process of its own: in the web process the engine's scheduler thread and
the event loop take turns on one interpreter lock, so every batched step waits
for the gateway's per-request Python work and the other way round; the gain of
batching 32 requests shrinks to what the lock leaves. (Measured on 2 cores, the
gateway's own per-request work was the larger limit, so this is opt-in:
docs/benchmarks.md, "Batching through the gateway".) The child is ``manage.py serve_engine`` (the
same worker a production CPU node runs) on a free 127.0.0.1 port; the gateway
reaches it as a remote replica (TOLLGATE_CPU_ENGINE_URL), health checks and
circuit breaker included.

* Its output goes to ours, each line prefixed ``[cpu-engine]``.
* It dies with us: SIGTERM from the kernel if this process dies without
  cleaning up (Linux ``PR_SET_PDEATHSIG``), terminated by :meth:`stop` otherwise.
* If it exits on its own (a crash, the OOM killer) it is started again on the
  same port after a pause; meanwhile requests for its models fail with 503s
  that name the unreachable worker, and the health checks put it back.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "[cpu-engine] "
RESTART_PAUSE_S = 1.0
_PR_SET_PDEATHSIG = 1


def default_threads() -> int:
    """torch threads for the child when TOLLGATE_CPU_ENGINE_THREADS is unset: one core fewer than there are."""
    return max(1, (os.cpu_count() or 1) - 1)


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


try:  # looked up here, not between fork and exec, where loading a library is not safe
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM when the thread that started it ends (the main
    thread for the first start, the watching thread for restarts; both live as long as the server)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineChild:
    def __init__(self, manage_py: Path, port: int = 0, out=None, embeddings: bool = True):
        self.manage_py = manage_py
        self.port = port or free_local_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = out or sys.stdout
        self.embeddings = embeddings
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, str(self.manage_py), "serve_engine", "--engine", "cpu",
                "--host", "127.0.0.1", "--port", str(self.port)]
        return argv + (["--embeddings"] if self.embeddings else [])

    def start(self, ready_timeout_s: float = 120.0) -> None:
        """Start the child and wait until its /health answers; then watch it (restart on exit)."""
        self._spawn()
        self.wait_ready(ready_timeout_s)
        self._monitor = threading.Thread(target=self._watch, name="tollgate-cpu-engine-child", daemon=True)
        self._monitor.start()

    def _spawn(self) -> None:
        env = dict(os.environ)
        env.pop("TOLLGATE_CPU_ENGINE_URL", None)  # the child runs the engine itself
        if env.get("TOLLGATE_CPU_ENGINE_THREADS", "0") in ("", "0"):
            # Leave a core to the web process. torch's default (one intra-op thread per core) made every
            # step wait for a thread the web process had pushed off its core: on 2 busy cores the
            # child's decode steps took 15-35 ms instead of 1.5, one at a time 44 tok/s against 300-400.
            env["TOLLGATE_CPU_ENGINE_THREADS"] = str(default_threads())
        self.process = subprocess.Popen(self.argv(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                        preexec_fn=_die_with_parent if _prctl is not None else None)
        self.starts += 1
        threading.Thread(target=self._pump, args=(self.process,), name="tollgate-cpu-engine-log",
                         daemon=True).start()

    def _pump(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.out.write(PREFIX + line if line.endswith("\n") else PREFIX + line + "\n")
            self.out.flush()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the CPU engine worker exited with status {self.process.returncode} "
                                   "before it answered (its output is above, prefixed [cpu-engine])")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the CPU engine worker did not answer on {self.url} in {timeout_s:.0f} s")
            time.sleep(0.1)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            code = self.process.wait()
            if self._stopping.is_set():
                return
            logger.error("the CPU engine worker (pid %s) exited with status %s; starting it again in %.0f s",
                         self.process.pid, code, RESTART_PAUSE_S)
            if self._stopping.wait(RESTART_PAUSE_S):
                return
            try:
                self._spawn()
            except OSError:
                logger.exception("could not start the CPU engine worker again")
                return

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
