"""Benchmark: continuous batching vs one request at a time on the in-process CPU engine.

For each concurrency level C, C clients each send requests back to back (a
closed loop) until the run's requests are done, against

* ``batched``: ``CpuEngine(max_num_seqs=32)`` (iteration-level batching), and
* ``sequential``: ``CpuEngine(max_num_seqs=1)`` (one request at a time; the
  others wait in the queue, so their latency includes the wait),

with the same requests, in the same process, interleaved (``--repeats`` runs
each, median throughput reported). Prints a markdown table of output tokens/s,
p50/p99 request latency (submission to last token) and p50 time to first
token, and the batched/sequential throughput ratio.

Then the structured-output rows: the batched engine at each of
``--structured-levels`` with every request free, half of them constrained
by a JSON schema (``response_format``, batched together with the free ones)
and all of them constrained, interleaved the same way; throughput relative
to the all-free run in the same process is the cost of constrained decoding.

    .venv/bin/python bench/cpu_engine.py [--model tollgate-small] [--max-tokens 64]

``--curve-out FILE`` also writes the batched engine's curve (concurrency ->
output tokens/s, TTFT p50/p95, request latency p50) as JSON: the replica
model that ``manage.py plan_capacity --curve FILE`` replays demand through
(capacity/curves.py reads it; a curve measured on a GPU worker has the same
shape).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from serving.engines.base import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from serving.engines.cpu.engine import CpuEngine  # noqa: E402

PROMPTS = [
    "Summarise the quarterly budget report for the platform team.",
    "What is the capital of France?",
    "Write a haiku about rate limits.",
    "Explain continuous batching to a new engineer in two sentences.",
    "List three ways to reduce inference cost.",
    "Translate 'good morning' into German.",
    "Why do tenants need per-feature budgets?",
    "Draft a polite reply declining a meeting.",
]


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "tier": {"enum": ["mini", "small", "large"]}, "active": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tier", "active", "tags"]}}}


def make_requests(model: str, n: int, max_tokens: int, tag: str, constrained_every: int = 0) -> list[GenerationRequest]:
    """``constrained_every`` k > 0: every k-th request asks for SCHEMA_FORMAT (1: all of them)."""
    return [
        GenerationRequest(
            request_id=f"{tag}-{i}",
            model=model,
            messages=(ChatMessage("user", PROMPTS[i % len(PROMPTS)]),),
            # Sampled with a fixed seed: realistic, and the same tokens for both engines.
            sampling=SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=i,
                                    response_format=SCHEMA_FORMAT if constrained_every and i % constrained_every == 0
                                    else None),
        )
        for i in range(n)
    ]


async def run_level(engine: CpuEngine, requests: list[GenerationRequest], concurrency: int) -> dict:
    queue = list(reversed(requests))
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while queue:
            req = queue.pop()
            t0 = time.perf_counter()
            stream = engine.stream(req)
            async for _ in stream:
                pass
            latencies.append(time.perf_counter() - t0)
            ttfts.append(stream.result.time_to_first_token_s or 0.0)
            tokens += stream.result.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"tok_s": tokens / wall, "latencies": latencies, "ttfts": ttfts}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize(runs: list[dict]) -> dict:
    """Median throughput over the repeats; latency percentiles over all their requests."""
    latencies = [x for r in runs for x in r["latencies"]]
    return {
        "tok_s": statistics.median(r["tok_s"] for r in runs),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "ttft_p50": percentile([x for r in runs for x in r["ttfts"]], 0.50),
        "ttft_p95": percentile([x for r in runs for x in r["ttfts"]], 0.95),
    }


def write_curve(path: str, model: str, max_tokens: int, rows: list, threads: int) -> None:
    """The batched engine's measured points, in the format capacity/curves.py reads."""
    points = [{"concurrency": c, "requests": n, "tokens_per_s": round(b["tok_s"], 3),
               "ttft_p50_s": round(b["ttft_p50"], 5), "ttft_p95_s": round(b["ttft_p95"], 5),
               "latency_p50_s": round(b["p50"], 5)} for c, n, b, _ in rows]
    curve = {"engine": "cpu", "model": model, "output_tokens_per_request": max_tokens,
             "max_num_seqs": 32, "torch_threads": threads, "cpus": os.cpu_count(),
             "machine": platform.processor() or platform.machine(),
             "measured_by": "bench/cpu_engine.py", "points": points}
    with open(path, "w") as f:
        json.dump(curve, f, indent=1)
        f.write("\n")
    print(f"curve written to {path}", file=sys.stderr)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tollgate-small")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,8,32,64")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per engine and level")
    ap.add_argument("--structured-levels", default="8,32", help="concurrency levels of the structured rows")
    ap.add_argument("--curve-out", metavar="FILE", help="write the batched engine's curve (JSON) for plan_capacity")
    args = ap.parse_args()

    import torch

    threads = int(os.environ.get("TOLLGATE_CPU_ENGINE_THREADS") or 0)  # as the gateway reads it (0: torch's default)
    batched = CpuEngine(models=(args.model,), max_num_seqs=32, threads=threads)
    sequential = CpuEngine(models=(args.model,), max_num_seqs=1, threads=threads)
    batched.load(args.model)
    sequential.load(args.model)
    # Warm-up (thread start, allocator, tokenizer tables).
    for eng in (batched, sequential):
        await run_level(eng, make_requests(args.model, 4, 8, "warm"), 4)

    rows = []
    for c in (int(x) for x in args.levels.split(",")):
        n = max(args.min_requests, c * args.requests_per_client)
        runs: dict[str, list[dict]] = {"batched": [], "sequential": []}
        # Interleaved repeats: the two engines see the same machine conditions.
        for rep in range(args.repeats):
            for name, eng in (("batched", batched), ("sequential", sequential)):
                reqs = make_requests(args.model, n, args.max_tokens, f"{name}-{c}-{rep}")
                runs[name].append(await run_level(eng, reqs, c))
        b, s = summarize(runs["batched"]), summarize(runs["sequential"])
        rows.append((c, n, b, s))
        print(f"concurrency {c}: batched {b['tok_s']:.0f} tok/s, sequential {s['tok_s']:.0f} tok/s", file=sys.stderr)

    print(
        f"\n{args.model}, {args.max_tokens} output tokens/request, torch threads={torch.get_num_threads()}, "
        f"cpus={os.cpu_count()}\n"
    )
    print(
        "| concurrency | requests | batched tok/s | batched p50 s | batched p99 s | batched TTFT p50 s "
        "| sequential tok/s | sequential p50 s | sequential p99 s | throughput ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, n, b, s in rows:
        print(
            f"| {c} | {n} | {b['tok_s']:.0f} | {b['p50']:.3f} | {b['p99']:.3f} | {b['ttft_p50']:.3f} "
            f"| {s['tok_s']:.0f} | {s['p50']:.3f} | {s['p99']:.3f} | {b['tok_s'] / s['tok_s']:.2f}x |"
        )

    if args.curve_out:
        write_curve(args.curve_out, args.model, args.max_tokens, rows, torch.get_num_threads())

    # Structured output: the same batched engine, free vs half vs all constrained, interleaved.
    await run_level(batched, make_requests(args.model, 4, 8, "warm-json", constrained_every=1), 4)
    structured = []
    mixes = (("free", 0), ("half json_schema", 2), ("all json_schema", 1))
    for c in (int(x) for x in args.structured_levels.split(",") if x):
        n = max(args.min_requests, c * args.requests_per_client)
        runs = {name: [] for name, _ in mixes}
        for rep in range(args.repeats):
            for name, every in mixes:
                reqs = make_requests(args.model, n, args.max_tokens, f"so-{name}-{c}-{rep}", constrained_every=every)
                runs[name].append(await run_level(batched, reqs, c))
        structured.append((c, n, {name: summarize(r) for name, r in runs.items()}))
        print(f"structured, concurrency {c}: " + ", ".join(f"{k} {v['tok_s']:.0f} tok/s"
                                                           for k, v in structured[-1][2].items()), file=sys.stderr)
    if structured:
        print("\nStructured output (batched engine; constrained and free requests in the same batches)\n")
        print("| concurrency | requests | mix | tok/s | p50 s | TTFT p50 s | throughput vs free |")
        print("|---:|---:|---|---:|---:|---:|---:|")
        for c, n, rows_by_mix in structured:
            free = rows_by_mix["free"]["tok_s"]
            for name, r in rows_by_mix.items():
                print(f"| {c} | {n} | {name} | {r['tok_s']:.0f} | {r['p50']:.3f} | {r['ttft_p50']:.3f} "
                      f"| {r['tok_s'] / free:.2f}x |")
    batched.shutdown()
    sequential.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
