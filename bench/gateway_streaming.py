"""Benchmark: streamed tokens per second through the gateway, against the same token-per-write upstream direct.

Starts, on free 127.0.0.1 ports (the set-up of ``bench/gateway_overhead.py``):

* ``bench/instant_upstream.py --stream-tokens N``: every streamed answer is N
  tokens, one SSE chunk and one write per token, in vLLM's shape,
* Tollgate (``manage.py serve``, 1 process) with ``bench-echo`` in the
  interactive pool on that upstream: key auth, a budget hold and settlement,
  the usage ledger, shipping and spans all on,
* LiteLLM's proxy when ``--litellm PATH`` is given (1 worker, no database),

then, per concurrency level, a closed loop of streamed chat completions
(``stream_options.include_usage``) against each path in turn. The client
(aiohttp) reads each stream as it arrives, parses every SSE event and counts
the content chunks; a stream counts only if it had exactly N content chunks,
a usage chunk saying N completion tokens, and ended with ``[DONE]``.

Reported per path and level: tokens/s (content chunks received per second
of wall time), time to first token p50, server CPU per streamed token (from
/proc, the server process only) and Tollgate's tokens/s over the direct
path's in the same level.

    .venv/bin/python bench/gateway_streaming.py --litellm /tmp/litellm-venv/bin/litellm
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time

import aiohttp

from gateway_overhead import (BARE, MASTER_KEY, MODEL, TOLLGATE, cpu_seconds, start_bare_proxy, start_litellm,
                              start_tollgate, start_upstream, stop)

DIRECT = "upstream direct"
LITELLM = "LiteLLM proxy (1 worker, master key, no database)"


def stream_body(tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Stream to the benchmark."}],
            "max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True}}


def read_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete SSE events' data in ``buffer``, and what is left of it (an event not yet complete)."""
    *events, rest = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
    return [line[5:].strip() for event in events for line in event.split(b"\n") if line.startswith(b"data:")], rest


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict, tokens: int) -> tuple[int, float, str]:
    """(content chunks, seconds to the first, "" or what was wrong with the stream)."""
    t0 = time.perf_counter()
    first = 0.0
    count = 0
    done = False
    usage_tokens = None
    async with session.post(url, json=body) as response:
        if response.status != 200:
            await response.read()
            return 0, 0.0, str(response.status)
        buffer = b""
        async for data in response.content.iter_any():
            events, buffer = read_events(buffer + data)
            for event in events:
                if event == b"[DONE]":
                    done = True
                    continue
                chunk = json.loads(event)
                if chunk.get("usage"):  # the last one counts (the usage chunk, after any running usage)
                    usage_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        if not count:
                            first = time.perf_counter() - t0
                        count += 1
    if not done:
        return count, first, "no [DONE]"
    if count != tokens:
        return count, first, f"{count} content chunks"
    if usage_tokens != tokens:
        return count, first, f"usage said {usage_tokens}"
    return count, first, ""


async def closed_loop(url: str, headers: dict, streams: int, concurrency: int, tokens: int) -> dict:
    body = stream_body(tokens)
    ttfts: list[float] = []
    kinds: collections.Counter[str] = collections.Counter()
    received = 0
    remaining = streams
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=120),
                                     read_bufsize=1 << 20) as session:
        async def worker():
            nonlocal remaining, received
            while remaining > 0:
                remaining -= 1
                try:
                    count, first, wrong = await one_stream(session, url, body, tokens)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    kinds[type(exc).__name__] += 1
                    continue
                received += count
                if wrong:
                    kinds[wrong] += 1
                else:
                    ttfts.append(first)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ttfts.sort()
    return {"tokens_s": received / wall, "tokens": received,
            "ttft_p50": ttfts[len(ttfts) // 2] * 1000 if ttfts else float("nan"),
            "errors": sum(kinds.values()), "error_kinds": ", ".join(f"{k} x{v}" for k, v in kinds.most_common())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per stream")
    ap.add_argument("--streams", type=int, default=200, help="timed streams per path and level")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--levels", default="1,16")
    ap.add_argument("--litellm", default="", help="path to the litellm executable (own virtualenv)")
    ap.add_argument("--bare-proxy", action="store_true",
                    help="also time bench/bare_proxy.py, which passes the upstream's bytes on as it reads them: "
                         "the web stack's own floor")
    ap.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench_streaming")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    args = ap.parse_args()

    procs = []
    tmp = tempfile.mkdtemp(prefix="tollgate-bench-")
    try:
        upstream = start_upstream(procs, "--stream-tokens", str(args.tokens))
        gateway, key, _ = start_tollgate(procs, tmp, args.database_url, args.redis_url, upstream)
        print(f"Tollgate on {gateway}, pid {procs[1].pid}", file=sys.stderr)  # (to profile it)
        paths = {DIRECT: (f"{upstream}/v1/chat/completions", {}, procs[0].pid),
                 TOLLGATE: (f"{gateway}/v1/chat/completions", {"Authorization": f"Bearer {key}"}, procs[1].pid)}
        if args.bare_proxy:
            bare = start_bare_proxy(procs, upstream)
            paths[BARE] = (f"{bare}/v1/chat/completions", {}, procs[-1].pid)
        if args.litellm:
            litellm = start_litellm(procs, tmp, args.litellm, upstream)
            paths[LITELLM] = (f"{litellm}/v1/chat/completions", {"Authorization": f"Bearer {MASTER_KEY}"},
                              procs[-1].pid)

        results: dict[tuple[str, int], dict] = {}
        for c in (int(x) for x in args.levels.split(",")):
            for name, (url, headers, pid) in paths.items():
                asyncio.run(closed_loop(url, headers, args.warmup, c, args.tokens))
                cpu_before = cpu_seconds(pid)
                results[(name, c)] = r = asyncio.run(closed_loop(url, headers, args.streams, c, args.tokens))
                r["cpu_us"] = (cpu_seconds(pid) - cpu_before) * 1e6 / max(1, r["tokens"])
                print(f"c={c} {name}: {r['tokens_s']:.0f} tokens/s, TTFT p50 {r['ttft_p50']:.2f} ms, "
                      f"server CPU {r['cpu_us']:.1f} us/token, errors {r['errors']} {r['error_kinds']}",
                      file=sys.stderr)

        levels = sorted({c for _, c in results})
        print(f"\n{args.streams} streams of {args.tokens} tokens per path and level after {args.warmup} warm-up, "
              f"cpus={os.cpu_count()}\n")
        print("| path | concurrency | tokens/s | of direct | TTFT p50 ms | server CPU µs/token | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for c in levels:
            direct = results[(DIRECT, c)]["tokens_s"]
            for name in paths:
                r = results[(name, c)]
                kinds = f" ({r['error_kinds']})" if r["error_kinds"] else ""
                print(f"| {name} | {c} | {r['tokens_s']:.0f} | {r['tokens_s'] / direct:.0%} | {r['ttft_p50']:.2f} | "
                      f"{r['cpu_us']:.1f} | {r['errors']}{kinds} |")
        for c in levels:
            ratio = results[(TOLLGATE, c)]["tokens_s"] / results[(DIRECT, c)]["tokens_s"]
            print(f"\nc={c}: Tollgate/direct tokens/s = {ratio:.2f}")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
