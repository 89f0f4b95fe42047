"""Waiting for a `manage.py serve` process started by a test to answer."""

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_until_serving(base_url: str, server: subprocess.Popen, timeout_s: float = 90,
                       output: Callable[[], str] | None = None) -> None:
    """Return once the server at ``base_url`` answers ``/v1/models``. Fail with what it printed if it exits
    or does not answer within ``timeout_s`` (``output`` reads that; default: its piped stdout, if any)."""

    def printed() -> str:
        if output is not None:
            return output()
        return server.stdout.read() if server.stdout is not None and server.poll() is not None else ""

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"{base_url}/v1/models", timeout=2)
            return
        except httpx.TransportError:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}:\n{printed()}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {timeout_s:.0f} s:\n{printed()}") from None
            time.sleep(0.25)
