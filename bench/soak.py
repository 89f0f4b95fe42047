"""Soak test: N minutes at a steady request rate through the gateway on the CPU engine.

Starts Tollgate (``manage.py serve``, one process, the in-process CPU engine, PostgreSQL + Redis,
embedded ClickHouse in a temporary folder, the in-process usage shipper, spans on) with the CPU-engine
catalog, an org with a block budget (so every request reserves and settles) and a key; then sends
requests at a fixed rate (an open loop: a request starts every 1/rate seconds whether or not the
earlier ones are done), a steady mix of non-streaming chat, streaming chat and embeddings, and samples
the server's resident memory (RSS, from /proc) every few seconds. At the end it waits for the shipper
to empty the outbox, stops the server and reconciles the ledger with ClickHouse.

Expected: zero errors (every request a 200), memory flat after warm-up (the slope of RSS over the
second half of the run, in MiB per minute), every request one ledger row, and the ledger equal to
ClickHouse (rows and cost, raw events and both rollups). Baselines in the same run: the first minute
against the last (latency p50/p99 and RSS), so a leak or a slowdown shows as a ratio.

    .venv/bin/python bench/soak.py --minutes 10 --rate 4

The server's RSS grows for its first ten minutes or so (caches, allocator arenas, the embedded
ClickHouse) and then levels off: judge memory on ``--minutes 20`` or more (docs/benchmarks.md).

Uses a database of its own (``--database-url``; dropped and created afresh here) and a Redis db.
Exits 1 when any expectation fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import free_port, wait_until_up  # noqa: E402

CHAT_MODEL = "tollgate-mini"
EMBEDDING_MODEL = "all-minilm-l6-v2"
PROMPTS = ["Summarise the budget report.", "What is a token?", "Write a haiku about queues.",
           "Name three ways to cut inference cost."]

SETUP = """
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from budgets.models import Budget
from metering.models import CatalogModel, Price
from tenants.models import Feature, Organization
from tenants.services import issue_api_key

since = timezone.now() - timedelta(days=1)
for name, tier, window, (p_in, p_cached, p_out) in [
        ("tollgate-mini", 1, 2048, ("0.10", "0.01", "0.40")),
        ("all-minilm-l6-v2", 1, 256, ("0.02", "0.02", "0"))]:
    model = CatalogModel.objects.create(name=name, tier=tier, context_window=window)
    Price.objects.create(model=model, effective_from=since, input_per_mtok=Decimal(p_in),
                         cached_input_per_mtok=Decimal(p_cached), output_per_mtok=Decimal(p_out))
org = Organization.objects.create(slug="soak", name="Soak")
feature = Feature.objects.create(organization=org, slug="soak")
Budget.objects.create(organization=org, feature=None, amount=Decimal("1000000"))
print("KEY=" + issue_api_key(org, "soak key", default_feature=feature).plaintext)
"""


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 3:
        return 0.0
    xs, ys = zip(*samples)
    return statistics.linear_regression(xs, ys).slope * 60


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def prepare_database(database_url: str, env: dict) -> str:
    import psycopg

    base, name = database_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return next(line[4:] for line in out.splitlines() if line.startswith("KEY="))


def request_for(i: int, max_tokens: int) -> tuple[str, str, dict]:
    """The i-th request of the steady mix: chat, streaming chat, chat, embeddings."""
    kind = ("chat", "chat-stream", "chat", "embeddings")[i % 4]
    if kind == "embeddings":
        return kind, "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": [PROMPTS[i % len(PROMPTS)], "soak"]}
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "seed": i}
    if kind == "chat-stream":
        body.update(stream=True, stream_options={"include_usage": True})
    return kind, "/v1/chat/completions", body


async def send(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[str, str | None]:
    """``(kind, None)`` on success, or ``(kind, why it failed)``."""
    kind, path, body = request_for(i, max_tokens)
    try:
        if body.get("stream"):
            async with client.stream("POST", path, json=body) as response:
                text = (await response.aread()).decode()
                if response.status_code != 200:
                    return kind, f"HTTP {response.status_code}"
                if not text.rstrip().endswith("data: [DONE]") or '"error"' in text:
                    return kind, "stream did not end with [DONE]"
                return kind, None
        response = await client.post(path, json=body)
        return kind, None if response.status_code == 200 else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return kind, type(exc).__name__


async def steady_load(base_url: str, key: str, pid: int, minutes: float, rate: float, max_tokens: int,
                      sample_s: float) -> dict:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    results: list[tuple[float, float, str, str | None]] = []  # (start offset s, latency s, kind, error)
    rss: list[tuple[float, float]] = []
    duration = minutes * 60
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        t0 = time.monotonic()

        async def one(i: int, offset: float):
            start = time.monotonic()
            kind, error = await send(client, i, max_tokens)
            results.append((offset, time.monotonic() - start, kind, error))

        async def sample():
            while (now := time.monotonic() - t0) < duration:
                value = rss_mib(pid)
                if value is not None:
                    rss.append((now, value))
                await asyncio.sleep(sample_s)

        sampler = asyncio.create_task(sample())
        tasks, i = [], 0
        while (offset := i / rate) < duration:
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, offset)))
            i += 1
            if i % int(max(rate * 60, 1)) == 0:
                done = [r for r in results if r[3] is None]
                print(f"  {i / rate / 60:.1f} min: {i} sent, {len(results) - len(done)} errors, "
                      f"RSS {rss[-1][1] if rss else float('nan'):.0f} MiB", file=sys.stderr)
        await asyncio.gather(*tasks)
        await sampler
        wall = time.monotonic() - t0
    return {"results": results, "rss": rss, "sent": i, "wall": wall}


def wait_until_shipped(timeout: float = 120.0) -> int:
    from metering.models import UsageRecord

    deadline = time.monotonic() + timeout
    while (pending := UsageRecord.objects.filter(shipped_at__isnull=True).count()) and time.monotonic() < deadline:
        time.sleep(1)
    return pending


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second (open loop)")
    ap.add_argument("--max-tokens", type=int, default=8, help="output tokens per chat completion")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--max-slope", type=float, default=1.0,
                    help="MiB/minute over the second half under which memory counts as flat")
    ap.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench_soak")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="tollgate-soak-")
    env = dict(os.environ, DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
               CLICKHOUSE_DSN=f"chdb:///{tmp}/ch", TOLLGATE_VAR_DIR=f"{tmp}/var", TOLLGATE_ENGINE="cpu",
               TOLLGATE_INPROCESS_SHIPPER="true", UVICORN_LOG_LEVEL="warning", DEBUG="false",
               DJANGO_SETTINGS_MODULE="tollgate.settings")
    env.pop("CELERY_BROKER_URL", None)
    key = prepare_database(args.database_url, env)
    # This process reads the ledger (and, once the server has stopped, ClickHouse) with the same settings.
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "CLICKHOUSE_DSN", "TOLLGATE_VAR_DIR",
                                           "TOLLGATE_ENGINE", "DJANGO_SETTINGS_MODULE")})
    os.environ["TOLLGATE_INPROCESS_SHIPPER"] = "false"
    import django

    django.setup()

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL)
    began = datetime.now(timezone.utc)
    try:
        wait_until_up(f"{base_url}/v1/models", server)
        # Warm-up outside the measured window: the first chat and embedding load the models.
        for i in range(4):
            kind, path, body = request_for(i, args.max_tokens)
            httpx.post(base_url + path, json=body, timeout=120,
                       headers={"Authorization": f"Bearer {key}"}).raise_for_status()
        print(f"soak: {args.minutes} min at {args.rate} requests/s, server pid {server.pid}", file=sys.stderr)
        run = asyncio.run(steady_load(base_url, key, server.pid, args.minutes, args.rate, args.max_tokens,
                                      args.sample_s))
        pending = wait_until_shipped()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    ended = datetime.now(timezone.utc)

    from metering import queries
    from metering.models import UsageRecord

    start = began.replace(minute=0, second=0, microsecond=0)
    end = ended.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    report = queries.reconcile(start, end)
    ledger_rows = UsageRecord.objects.count()

    results, rss, sent = run["results"], run["rss"], run["sent"]
    errors = [r for r in results if r[3] is not None]
    by_kind: dict[str, list[float]] = {}
    for offset, latency, kind, error in results:
        if error is None:
            by_kind.setdefault(kind, []).append(latency)
    first = [r[1] for r in results if r[0] < 60 and r[3] is None]
    last = [r[1] for r in results if r[0] >= run["wall"] - 60 - 1 and r[3] is None]
    half = run["wall"] / 2
    second_half = [(t, m) for t, m in rss if t >= half]
    slope_all, slope_late = slope_per_minute(rss), slope_per_minute(second_half)
    rss_first = statistics.median(m for t, m in rss if t < 60) if rss else float("nan")
    rss_last = statistics.median(m for t, m in rss if t >= run["wall"] - 60) if rss else float("nan")
    flat = abs(slope_late) <= args.max_slope

    print(f"\nsoak {began:%Y-%m-%d %H:%M}–{ended:%H:%M} UTC: {args.minutes:g} min at {args.rate:g} requests/s "
          f"(chat : streaming chat : embeddings = 2 : 1 : 1, max_tokens {args.max_tokens}), cpus={os.cpu_count()}, "
          f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| kind | requests | errors | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("chat", "chat-stream", "embeddings"):
        latencies = by_kind.get(kind, [])
        n = sum(1 for r in results if r[2] == kind)
        print(f"| {kind} | {n} | {sum(1 for r in errors if r[2] == kind)} | {percentile(latencies, 0.5) * 1000:.0f} "
              f"| {percentile(latencies, 0.99) * 1000:.0f} |")
    print(f"| all | {len(results)} | {len(errors)} | {percentile([r[1] for r in results], 0.5) * 1000:.0f} "
          f"| {percentile([r[1] for r in results], 0.99) * 1000:.0f} |")

    print("\n| measure | first minute | last minute | last / first |")
    print("|---|---:|---:|---:|")
    for name, a, b in (("latency p50 ms", percentile(first, 0.5) * 1000, percentile(last, 0.5) * 1000),
                       ("latency p99 ms", percentile(first, 0.99) * 1000, percentile(last, 0.99) * 1000),
                       ("server RSS MiB (median)", rss_first, rss_last)):
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    print(f"\nRSS slope: {slope_all:+.2f} MiB/min over the run, {slope_late:+.2f} MiB/min over the second half "
          f"({len(rss)} samples; min {min(m for _, m in rss):.0f}, max {max(m for _, m in rss):.0f} MiB): "
          f"{'flat' if flat else 'NOT flat'} (threshold {args.max_slope:g} MiB/min)")

    print("\n| org | ledger rows | ledger cost | pending | ClickHouse rows | ClickHouse cost | hourly rollup cost "
          "| daily rollup cost | equal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for line in report:
        print(f"| {line.org_slug} | {line.ledger_rows} | {line.ledger_cost} | {line.pending_rows} | "
              f"{line.clickhouse_rows} | {line.clickhouse_cost} | {line.rollup_cost} | "
              f"{line.daily_rollup_cost if line.daily_rollup_cost is not None else '–'} | "
              f"{'yes' if line.matches and not line.pending_rows else 'NO'} |")
    # The warm-up requests are billed too: every request is one ledger row.
    expected_rows = sent + 4
    print(f"\nrequests sent {sent} (+4 warm-up), ledger rows {ledger_rows} (expected {expected_rows}), "
          f"left unshipped {pending}")

    failures = []
    if errors:
        failures.append(f"{len(errors)} errors: {sorted({e[3] for e in errors})}")
    if not flat:
        failures.append(f"memory not flat ({slope_late:+.2f} MiB/min)")
    if ledger_rows != expected_rows:
        failures.append(f"ledger rows {ledger_rows} != requests {expected_rows}")
    if pending or not report or not all(line.matches and not line.pending_rows for line in report):
        failures.append("ledger != ClickHouse")
    print("\nresult: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
