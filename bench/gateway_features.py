"""Benchmark: what each part of the gateway's hot path costs, as server CPU per request.

``bench/gateway_overhead.py`` times the whole gateway against the upstream direct and LiteLLM. This one
takes it apart: it starts the same instant upstream, the full gateway (``manage.py serve``: key auth, a
block budget held and settled, the ledger row, shipping to embedded ClickHouse, five spans exported to
it), then the same gateway once per variant below, each with one part switched off by its setting (each
on a database and an embedded ClickHouse of its own), and ``bench/bare_proxy.py``, the same web stack
(uvicorn, Starlette, aiohttp) passing requests on and doing nothing else.

Per concurrency level it runs closed loops of non-streaming chat completions against every path in
turn, ``--rounds`` times interleaved (this machine's speed drifts by more than most of these parts cost),
and prints the median of each path's server CPU per request (``/proc``, all threads, embedded ClickHouse's
own threads included) and requests/s, with what switching a part off saved against the full gateway in
the same rounds.

    .venv/bin/python bench/gateway_features.py --requests 2000 --rounds 3 \\
        --database-url postgres://postgres@127.0.0.1:5432/tg_bench_features --redis-url redis://127.0.0.1:6379/10

Each variant gets the database ``<name>_<n>`` next to ``--database-url``'s, created and migrated here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile

import httpx

from gateway_overhead import (BARE, BODY, TOLLGATE, closed_loop, cpu_seconds, embedded_clickhouse_cpu_seconds,
                              start_bare_proxy, start_tollgate, start_upstream, stop)

# name -> the settings that switch the part off (docs/configuration.md describes each).
VARIANTS: dict[str, dict[str, str]] = {
    "spans not exported (TOLLGATE_SPANS_TO_CLICKHOUSE=false)": {"TOLLGATE_SPANS_TO_CLICKHOUSE": "false"},
    "no tracing at all (OTEL_SDK_DISABLED=true)": {"TOLLGATE_SPANS_TO_CLICKHOUSE": "false",
                                                    "OTEL_SDK_DISABLED": "true"},
    "one trace in ten kept (OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1)": {
        "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "ledger not shipped (TOLLGATE_INPROCESS_SHIPPER=false)": {"TOLLGATE_INPROCESS_SHIPPER": "false"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="requests per path, level and round")
    ap.add_argument("--warmup", type=int, default=200, help="requests before each path's first round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="1,16")
    ap.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench_features")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    args = ap.parse_args()

    procs = []
    tmp = tempfile.mkdtemp(prefix="tollgate-bench-features-")
    try:
        upstream = start_upstream(procs)
        paths: dict[str, tuple[str, dict]] = {}
        pids: dict[str, int] = {}
        for n, (name, settings) in enumerate({TOLLGATE: {}, **VARIANTS}.items()):
            os.makedirs(f"{tmp}/{n}")
            print(f"starting: {name}", file=sys.stderr)
            gateway, key, _ = start_tollgate(procs, f"{tmp}/{n}", f"{args.database_url}_{n}", args.redis_url,
                                             upstream, settings)
            paths[name] = (f"{gateway}/v1/chat/completions", {"Authorization": f"Bearer {key}"})
            pids[name] = procs[-1].pid
            # Every gateway must really answer before anything is timed.
            httpx.post(paths[name][0], json=BODY, timeout=30, headers=paths[name][1]).raise_for_status()
        paths[BARE] = (f"{start_bare_proxy(procs, upstream)}/v1/chat/completions", {})
        pids[BARE] = procs[-1].pid

        levels = [int(x) for x in args.levels.split(",")]
        runs: dict[tuple[str, int], list[dict]] = {}
        for c in levels:
            for name, (url, headers) in paths.items():
                asyncio.run(closed_loop(url, headers, args.warmup, c))
            for round_ in range(args.rounds):
                for name, (url, headers) in paths.items():
                    cpu0, ch0 = cpu_seconds(pids[name]), embedded_clickhouse_cpu_seconds(pids[name])
                    r = asyncio.run(closed_loop(url, headers, args.requests, c))
                    r["cpu_ms"] = (cpu_seconds(pids[name]) - cpu0) * 1000 / args.requests
                    r["ch_cpu_ms"] = (embedded_clickhouse_cpu_seconds(pids[name]) - ch0) * 1000 / args.requests
                    runs.setdefault((name, c), []).append(r)
                    print(f"c={c} round {round_ + 1} {name}: {r['rps']:.0f} rps, {r['cpu_ms']:.2f} ms CPU/request, "
                          f"errors {r['errors']} {r['error_kinds']}", file=sys.stderr)

        print(f"\n{args.requests} requests per path, level and round; medians of {args.rounds} interleaved rounds; "
              f"cpus={os.cpu_count()}\n")
        print("| path | concurrency | requests/s | server CPU ms/request | of which embedded ClickHouse "
              "| CPU saved against the full gateway, ms/request | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for c in levels:
            full = statistics.median(r["cpu_ms"] for r in runs[(TOLLGATE, c)])
            for name in paths:
                rs = runs[(name, c)]
                cpu = statistics.median(r["cpu_ms"] for r in rs)
                ch = statistics.median(r["ch_cpu_ms"] for r in rs) if name != BARE else None
                saved = "–" if name == TOLLGATE else f"{full - cpu:.2f}"
                print(f"| {name} | {c} | {statistics.median(r['rps'] for r in rs):.0f} | {cpu:.2f} | "
                      f"{'–' if ch is None else f'{ch:.2f}'} | {saved} | {sum(r['errors'] for r in rs)} |")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
