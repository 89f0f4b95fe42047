"""Benchmark: what the gateway adds, against the same instant upstream, direct and through LiteLLM.

Starts, on free 127.0.0.1 ports:

* ``bench/instant_upstream.py`` (answers a fixed chat completion at once),
* Tollgate (``manage.py serve``, 1 process) with the model ``bench-echo``
  deployed in the interactive pool on that upstream, with key auth, a block
  budget on the org (so every request reserves and settles), the usage
  ledger, usage shipping to ClickHouse and OpenTelemetry spans all on,
* LiteLLM's proxy (``--litellm PATH``, installed in its own virtualenv: ``python -m
  venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'``) with a
  master key, no database, routing ``bench-echo`` to the same upstream,

then, for each concurrency level, runs a closed loop of N non-streaming chat
completions (after a warm-up) against each path in turn, and prints p50/p99
latency and requests/s. "Added p50" is a path's p50 minus the direct p50 in
the same level.

    .venv/bin/python bench/gateway_overhead.py --litellm /tmp/litellm-venv/bin/litellm

Tollgate needs PostgreSQL and Redis (``--database-url``, ``--redis-url``); it
uses a database of its own (created and migrated here) and embedded
ClickHouse in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-echo"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi to the benchmark."}], "max_tokens": 16}
MASTER_KEY = "sk-bench-master"
LIMITED = "Tollgate gateway + rate limits (key and org, RPM and TPM)"
BARE = "bare proxy (uvicorn, Starlette, aiohttp; nothing else)"
TOLLGATE = "Tollgate gateway (auth, budget, ledger, spans)"

SETUP = """
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from budgets.models import Budget
from metering.models import CatalogModel, Price
from serving.models import Deployment, Pool, Replica
from tenants.models import Feature, Organization
from tenants.services import issue_api_key

model, _ = CatalogModel.objects.get_or_create(name="{model}", defaults={{"tier": 1, "context_window": 2048}})
if not model.prices.exists():
    Price.objects.create(model=model, effective_from=timezone.now() - timedelta(days=1),
                         input_per_mtok=Decimal("0.10"), cached_input_per_mtok=Decimal("0.01"),
                         output_per_mtok=Decimal("0.40"))
pool, _ = Pool.objects.get_or_create(name="interactive", defaults={{"max_in_flight_per_replica": 256,
                                                                    "max_queue": 1024}})
Deployment.objects.filter(model="{model}").delete()
deployment = Deployment.objects.create(model="{model}", pool=pool)
Replica.objects.create(deployment=deployment, url="{upstream}")
org, _ = Organization.objects.get_or_create(slug="bench", defaults={{"name": "Bench"}})
feature, _ = Feature.objects.get_or_create(organization=org, slug="bench")
Budget.objects.get_or_create(organization=org, feature=None, defaults={{"amount": Decimal("1000000")}})
print("KEY=" + issue_api_key(org, "bench key", default_feature=feature).plaintext)
# The same with all four rate limits (key and org, requests and tokens per minute), too high to refuse anything.
limited, _ = Organization.objects.get_or_create(slug="bench-limited", defaults={{"name": "Bench limited"}})
Organization.objects.filter(pk=limited.pk).update(requests_per_minute=10**9, tokens_per_minute=10**9)
limited_feature, _ = Feature.objects.get_or_create(organization=limited, slug="bench")
Budget.objects.get_or_create(organization=limited, feature=None, defaults={{"amount": Decimal("1000000")}})
limited_key = issue_api_key(limited, "bench limited key", default_feature=limited_feature)
limited_key.api_key.requests_per_minute = limited_key.api_key.tokens_per_minute = 10**9
limited_key.api_key.save()
print("LIMITED_KEY=" + limited_key.plaintext)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def prepare_database(database_url: str, env: dict, upstream: str) -> tuple[str, str]:
    import psycopg

    base, name = database_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP.format(model=MODEL, upstream=upstream)],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    keys = dict(line.split("=", 1) for line in out.splitlines() if line.startswith(("KEY=", "LIMITED_KEY=")))
    return keys["KEY"], keys["LIMITED_KEY"]


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its threads so far (Linux /proc), 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def embedded_clickhouse_cpu_seconds(pid: int | None) -> float:
    """The part of ``cpu_seconds`` spent by embedded ClickHouse's own threads (chDB names its native threads;
    Python's are all "python" on 3.11, uvloop's "libuv-worker"). In production that work is the ClickHouse
    server's, not the gateway's."""
    if pid is None:
        return 0.0
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().strip() in ("python", "libuv-worker"):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def start_upstream(procs: list[subprocess.Popen], *args: str) -> str:
    """Start bench/instant_upstream.py (with ``args``) on a free port; its base URL."""
    port = free_port()
    procs.append(subprocess.Popen([sys.executable, "bench/instant_upstream.py", "--port", str(port), *args], cwd=ROOT))
    upstream = f"http://127.0.0.1:{port}"
    wait_until_up(f"{upstream}/health", procs[-1])
    return upstream


def start_bare_proxy(procs: list[subprocess.Popen], upstream: str) -> str:
    """Start bench/bare_proxy.py in front of ``upstream``: the floor of the gateway's own stack."""
    port = free_port()
    procs.append(subprocess.Popen([sys.executable, "bench/bare_proxy.py", "--port", str(port),
                                   "--upstream", upstream], cwd=ROOT))
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health", procs[-1])
    return url


def start_tollgate(procs: list[subprocess.Popen], tmp: str, database_url: str, redis_url: str,
                   upstream: str, settings: dict[str, str] | None = None) -> tuple[str, str, str]:
    """Migrate and seed a database of its own, then start ``manage.py serve`` (1 process) serving ``bench-echo``
    on ``upstream``: its base URL, the plain key and the rate-limited key. ``settings``: environment
    variables on top of the bench's (a variant with a feature off)."""
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url,
               CLICKHOUSE_DSN=f"chdb:///{tmp}/ch", TOLLGATE_VAR_DIR=f"{tmp}/var", TOLLGATE_ENGINE="none",
               TOLLGATE_EMBEDDINGS_IN_PROCESS="false", TOLLGATE_INPROCESS_SHIPPER="true",
               UVICORN_LOG_LEVEL="warning", DEBUG="false")
    env.update(settings or {})
    env.pop("CELERY_BROKER_URL", None)
    key, limited_key = prepare_database(database_url, env, upstream)
    port = free_port()
    procs.append(subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT,
                                  env=env, stdout=subprocess.DEVNULL))
    gateway = f"http://127.0.0.1:{port}"
    wait_until_up(f"{gateway}/v1/models", procs[-1])
    return gateway, key, limited_key


def start_litellm(procs: list[subprocess.Popen], tmp: str, litellm: str, upstream: str) -> str:
    """Start LiteLLM's proxy (1 worker, master key, no database) routing ``bench-echo`` to ``upstream``."""
    port = free_port()
    config = Path(tmp) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: unused\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS"))}
    procs.append(subprocess.Popen([litellm, "--config", str(config), "--port", str(port), "--num_workers", "1"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{url}/health/liveliness", procs[-1])
    return url


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def closed_loop(url: str, headers: dict, n: int, concurrency: int, client: str = "aiohttp") -> dict:
    """``n`` requests from ``concurrency`` workers, each sending its next request when its last is answered.

    The load generator shares the machine's two cores with the servers, so its own cost caps what any path
    can show: through httpx's client the upstream direct did 237 requests/s at 64 connections, through
    aiohttp's about 11,000 (docs/benchmarks.md). ``client_cpu_ms`` reports the client's CPU per request.
    """
    latencies: list[float] = []
    kinds: collections.Counter[str] = collections.Counter()  # what each failed request got: a status or an exception
    remaining = n
    send = _httpx_sender if client == "httpx" else _aiohttp_sender
    async with send(url, headers, concurrency) as post:
        async def worker():
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    status = await post()
                    if status != 200:
                        kinds[str(status)] += 1
                except (httpx.HTTPError, aiohttp.ClientError) as exc:  # a dropped connection: an error, not a crash
                    kinds[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - t0)

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    return {"rps": n / wall, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "client_cpu_ms": client_cpu * 1000 / n,
            "errors": sum(kinds.values()), "error_kinds": ", ".join(f"{k} x{v}" for k, v in kinds.most_common())}


@contextlib.asynccontextmanager
async def _aiohttp_sender(url: str, headers: dict, concurrency: int):
    body = json.dumps(BODY).encode()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60),
                                     headers={**headers, "Content-Type": "application/json"}) as session:
        async def post() -> int:
            async with session.post(url, data=body) as response:
                await response.read()
                return response.status

        yield post


@contextlib.asynccontextmanager
async def _httpx_sender(url: str, headers: dict, concurrency: int):
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as client:
        async def post() -> int:
            return (await client.post(url, json=BODY)).status_code

        yield post


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                    help="the load generator's HTTP client (aiohttp: far less CPU per request at high concurrency)")
    ap.add_argument("--litellm", default="", help="path to the litellm executable (own virtualenv)")
    ap.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench_gateway")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    ap.add_argument("--rate-limits", nargs="?", const="after", choices=["after", "first"], default="",
                    help="also time a key whose requests check all four rate limits (key and org, RPM and TPM), "
                         "after the plain key in each level or (first) before it")
    ap.add_argument("--bare-proxy", action="store_true",
                    help="also time bench/bare_proxy.py (the same web stack passing requests on, nothing else): "
                         "the floor under the gateway's CPU per request")
    args = ap.parse_args()

    procs: list[subprocess.Popen] = []
    tmp = tempfile.mkdtemp(prefix="tollgate-bench-")
    try:
        upstream = start_upstream(procs)
        gateway, key, limited_key = start_tollgate(procs, tmp, args.database_url, args.redis_url, upstream)

        pids = {"upstream direct": procs[0].pid, TOLLGATE: procs[-1].pid, LIMITED: procs[-1].pid}
        paths = {
            "upstream direct": (f"{upstream}/v1/chat/completions", {}),
            TOLLGATE: (f"{gateway}/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
        }
        if args.rate_limits:
            paths[LIMITED] = (f"{gateway}/v1/chat/completions", {"Authorization": f"Bearer {limited_key}"})
            if args.rate_limits == "first":  # the later path in a level runs on a fuller ledger and ClickHouse
                paths = {name: paths[name] for name in ("upstream direct", LIMITED, TOLLGATE)}
        if args.bare_proxy:
            bare = start_bare_proxy(procs, upstream)
            pids[BARE] = procs[-1].pid
            paths[BARE] = (f"{bare}/v1/chat/completions", {})
        if args.litellm:
            litellm = start_litellm(procs, tmp, args.litellm, upstream)
            pids["LiteLLM proxy (1 worker, master key, no database)"] = procs[-1].pid
            paths["LiteLLM proxy (1 worker, master key, no database)"] = (
                f"{litellm}/v1/chat/completions", {"Authorization": f"Bearer {MASTER_KEY}"})

        # The gateway must really answer before anything is timed.
        check = httpx.post(paths[TOLLGATE][0], json=BODY, timeout=30, headers={"Authorization": f"Bearer {key}"})
        check.raise_for_status()

        results: dict[tuple[str, int], dict] = {}
        for c in (int(x) for x in args.levels.split(",")):
            for name, (url, headers) in paths.items():
                asyncio.run(closed_loop(url, headers, args.warmup, c, args.client))
                # CPU time the server process spent per request: steadier than latency on a busy machine.
                cpu_before = cpu_seconds(pids.get(name))
                ch_before = embedded_clickhouse_cpu_seconds(pids.get(name))
                results[(name, c)] = r = asyncio.run(closed_loop(url, headers, args.requests, c, args.client))
                r["cpu_ms"] = (cpu_seconds(pids.get(name)) - cpu_before) * 1000 / args.requests
                r["ch_cpu_ms"] = (embedded_clickhouse_cpu_seconds(pids.get(name)) - ch_before) * 1000 / args.requests
                print(f"c={c} {name}: {r['rps']:.0f} rps, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                      f"server CPU {r['cpu_ms']:.2f} ms/request, errors {r['errors']} {r['error_kinds']}", file=sys.stderr)

        levels = sorted({c for _, c in results})
        print(f"\n{args.requests} requests per path and level after {args.warmup} warm-up, cpus={os.cpu_count()}, "
              f"load generator: {args.client}\n")
        print("| path | concurrency | requests/s | p50 ms | p99 ms | added p50 ms | server CPU ms/request "
              "| of which embedded ClickHouse | load generator CPU ms/request | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in levels:
            direct = results[("upstream direct", c)]["p50"]
            for name in paths:
                r = results[(name, c)]
                added = "–" if name == "upstream direct" else f"{r['p50'] - direct:.2f}"
                # Only Tollgate embeds ClickHouse; the other processes' thread names mean nothing here.
                ch = f"{r['ch_cpu_ms']:.2f}" if name.startswith("Tollgate") else "–"
                print(f"| {name} | {c} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {added} | "
                      f"{r['cpu_ms']:.2f} | {ch} | {r['client_cpu_ms']:.2f} | "
                      f"{r['errors']}{f' ({kinds})' if (kinds := r['error_kinds']) else ''} |")
        if args.rate_limits:
            gw = TOLLGATE
            for c in levels:
                base, limited = results[(gw, c)], results[(LIMITED, c)]
                print(f"\nc={c}: with rate limits / without: requests/s {limited['rps'] / base['rps']:.2f}x, "
                      f"p50 {limited['p50'] - base['p50']:+.2f} ms, server CPU {limited['cpu_ms'] - base['cpu_ms']:+.2f} "
                      f"ms/request")
        if args.bare_proxy:
            for c in levels:
                gw, floor = results[(TOLLGATE, c)], results[(BARE, c)]
                print(f"\nc={c}: Tollgate's server CPU above the bare proxy's: {gw['cpu_ms'] - floor['cpu_ms']:.2f} "
                      f"ms/request ({gw['cpu_ms']:.2f} against {floor['cpu_ms']:.2f})")
        if args.litellm:
            ll = "LiteLLM proxy (1 worker, master key, no database)"
            gw = TOLLGATE
            for c in levels:
                ratio = results[(gw, c)]["rps"] / results[(ll, c)]["rps"]
                added_gw = results[(gw, c)]["p50"] - results[("upstream direct", c)]["p50"]
                added_ll = results[(ll, c)]["p50"] - results[("upstream direct", c)]["p50"]
                print(f"\nc={c}: Tollgate/LiteLLM requests/s = {ratio:.2f}x; added p50 Tollgate {added_gw:.2f} ms "
                      f"vs LiteLLM {added_ll:.2f} ms ({added_gw / added_ll:.2f} of LiteLLM's)")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
