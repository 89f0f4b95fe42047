"""Benchmark: does continuous batching survive the gateway on the embedded default?

Starts the embedded default as ``make run`` does, in a temporary var dir
(SQLite, chDB, local cache, in-process Celery): ``migrate``, ``seed_demo``
(which prints the demo API key) and ``manage.py serve`` on a free port, with
the CPU engine either

* ``--engine in-process``: in the web process (``TOLLGATE_CPU_ENGINE_PROCESS=in-process``), or
* ``--engine worker``: as its own ``manage.py serve_engine`` process that the
  gateway reaches over HTTP as a remote replica
  (``TOLLGATE_CPU_ENGINE_PROCESS=separate``; ``make run`` runs it in-process by default).

Then, for each chat model, through HTTP with the official ``openai`` client
(``AsyncOpenAI``, non-streaming, ``max_tokens`` fixed, ``temperature=1``, a
``seed`` per request: deterministic, so each request is looked up in the exact
and semantic caches and its answer kept, and never answered from them since
every question is new; ``--no-seed`` leaves the seed out, so the caches are
bypassed): ``--sequential`` requests one at a time, then
``--rounds`` x ``--concurrency`` requests from ``--concurrency`` clients at
once, the two interleaved ``--repeats`` times (median throughput). ``--engine
both`` (the default) starts one gateway of each mode and interleaves their runs
too, so both see the same machine conditions. Throughput
is output tokens (``usage.completion_tokens``, summed) per second of wall time.
The CPU engine has no ``ignore_eos``: an answer may stop early at the
separator token, which is why tokens, not requests, are counted.

After the server stops, the engine alone in this process (``CpuEngine``, the
code path of ``bench/cpu_engine.py``) runs the same shape (one at a time vs
``--concurrency`` at once, same prompts and ``max_tokens``), for reference.

    .venv/bin/python bench/gateway_batching.py            # both modes, interleaved
    .venv/bin/python bench/gateway_batching.py --engine in-process --models tollgate-mini
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cpu_engine import PROMPTS, make_requests, run_level  # noqa: E402

MODELS = "tollgate-mini,tollgate-small,tollgate-large"
STRIPPED = {"DATABASE_URL", "REDIS_URL", "CLICKHOUSE_DSN", "TOLLGATE_INPROCESS_SHIPPER", "TOLLGATE_VAR_DIR",
            "DJANGO_SETTINGS_MODULE", "TOLLGATE_CPU_ENGINE_URL"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(var_dir: str, mode: str) -> tuple[subprocess.Popen, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    env.update({"TOLLGATE_VAR_DIR": var_dir,
                "TOLLGATE_CPU_ENGINE_PROCESS": "separate" if mode == "worker" else "in-process"})
    py = [sys.executable, "manage.py"]
    subprocess.run([*py, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    seeded = subprocess.run([*py, "seed_demo"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    key = re.search(r"API key \(acme\):\s+(\S+)", seeded.stdout).group(1)
    port = free_port()
    log = open(Path(var_dir) / "serve.log", "w")
    server = subprocess.Popen([*py, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not start; see {log.name}")
        time.sleep(0.3)
    return server, base, key


async def gateway_level(client: openai.AsyncOpenAI, model: str, n: int, concurrency: int, max_tokens: int,
                        tag: str, seeded: bool = True) -> dict:
    queue = list(range(n))
    tokens = 0
    latencies: list[float] = []

    async def one_client() -> None:
        nonlocal tokens
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            completion = await client.chat.completions.create(
                model=model, max_tokens=max_tokens, temperature=1.0, seed=i if seeded else openai.NOT_GIVEN,
                messages=[{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({tag} {i})"}])
            latencies.append(time.perf_counter() - t0)
            tokens += completion.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"tok_s": tokens / wall, "tokens": tokens, "requests": n, "p50": statistics.median(latencies)}


async def bench_gateways(gateways: dict[str, tuple[str, str]], models: list[str], args) -> dict:
    """Per model, each mode's one-at-a-time and concurrent runs, interleaved (the same machine conditions)."""
    clients = {mode: openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=600)
               for mode, (base, key) in gateways.items()}
    out: dict[str, dict[str, tuple[list, list]]] = {mode: {} for mode in gateways}
    for model in models:
        for mode, client in clients.items():
            await gateway_level(client, model, 8, 8, args.max_tokens, "warm")  # model build, connections
            out[mode][model] = ([], [])
        for rep in range(args.repeats):
            for mode, client in clients.items():
                seq, conc = out[mode][model]
                seq.append(await gateway_level(client, model, args.sequential, 1, args.max_tokens, f"s{rep}",
                                               args.seed))
                conc.append(await gateway_level(client, model, args.concurrency * args.rounds, args.concurrency,
                                                args.max_tokens, f"c{rep}", args.seed))
        for mode in gateways:
            seq, conc = out[mode][model]
            s = statistics.median(r["tok_s"] for r in seq)
            c = statistics.median(r["tok_s"] for r in conc)
            print(f"{model} through the gateway, {mode}: 1 at a time {s:.0f} tok/s, {args.concurrency} at once "
                  f"{c:.0f} tok/s ({c / s:.2f}x)", file=sys.stderr)
    for client in clients.values():
        await client.close()
    return out


async def bench_engine_alone(models: list[str], args) -> dict[str, tuple[float, float]]:
    from serving.engines.cpu.engine import CpuEngine

    threads = int(os.environ.get("TOLLGATE_CPU_ENGINE_THREADS") or 0)
    engine = CpuEngine(models=models, max_num_seqs=32, threads=threads)
    out = {}
    for model in models:
        engine.load(model)
        await run_level(engine, make_requests(model, 8, 8, "warm"), 8)
        seq, conc = [], []
        for rep in range(args.repeats):
            seq.append((await run_level(engine, make_requests(model, args.sequential, args.max_tokens, f"s{rep}"),
                                        1))["tok_s"])
            conc.append((await run_level(engine, make_requests(model, args.concurrency * args.rounds,
                                                               args.max_tokens, f"c{rep}"),
                                         args.concurrency))["tok_s"])
        out[model] = (statistics.median(seq), statistics.median(conc))
        print(f"{model} engine alone: {out[model][0]:.0f} vs {out[model][1]:.0f} tok/s", file=sys.stderr)
    engine.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["in-process", "worker", "both"], default="both")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="concurrent run: this many x --concurrency requests")
    ap.add_argument("--sequential", type=int, default=8, help="requests in the one-at-a-time run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-engine-alone", action="store_true")
    ap.add_argument("--seed", action=argparse.BooleanOptionalAction, default=True,
                    help="a seed per request (the default), which makes it cacheable; --no-seed bypasses the caches")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    modes = ["in-process", "worker"] if args.engine == "both" else [args.engine]
    servers, gateways = [], {}
    with tempfile.TemporaryDirectory(prefix="tg-gateway-batching-") as tmp:
        try:
            for mode in modes:
                os.makedirs(f"{tmp}/{mode}")
                server, base, key = start_gateway(f"{tmp}/{mode}", mode)
                servers.append(server)
                gateways[mode] = (base, key)
            through = asyncio.run(bench_gateways(gateways, models, args))
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
    alone = {} if args.no_engine_alone else asyncio.run(bench_engine_alone(models, args))

    print(f"\n{args.max_tokens} max output tokens, {args.concurrency} concurrent x {args.rounds} rounds vs "
          f"{args.sequential} one at a time, median of {args.repeats} interleaved repeats, "
          f"{'seeded (cached)' if args.seed else 'no seed (caches bypassed)'}, cpus={os.cpu_count()}\n")
    print(f"| model | engine | gateway 1 at a time tok/s | gateway {args.concurrency} at once tok/s "
          f"| gateway speedup | {args.concurrency} at once p50 s |")
    print("|---|---|---:|---:|---:|---:|")
    for model in models:
        for mode in modes:
            seq, conc = through[mode][model]
            s = statistics.median(r["tok_s"] for r in seq)
            c = statistics.median(r["tok_s"] for r in conc)
            p50 = statistics.median(r["p50"] for r in conc)
            print(f"| {model} | {mode} | {s:.0f} | {c:.0f} | {c / s:.2f}x | {p50:.3f} |")
        if model in alone:
            a, b = alone[model]
            print(f"| {model} | engine alone (no gateway) | {a:.0f} | {b:.0f} | {b / a:.2f}x | |")


if __name__ == "__main__":
    main()
