"""Benchmark: one rate-limit admission against real Redis, Tollgate's script vs the `limits` library.

One admission is what the gateway needs per request: check every limit that applies (key RPM, key TPM,
org RPM, org TPM; or two of them), take the request's cost from all of them or from none, and read each
limit's remaining room and reset time for OpenAI's x-ratelimit-* headers. Ways compared, same Redis,
same limits, one client thread, in the same run:

* ``tollgate script``: serving/ratelimits.py's RedisStore (one EVALSHA, all limits, atomic).
* ``limits sliding-window-counter, full``: the library's SlidingWindowCounterRateLimiter doing the same job
  the only way its API allows: ``test`` each limit, ``hit`` each, ``get_window_stats`` each (not atomic
  between processes: two can both pass ``test``).
* ``limits moving-window, full``: the same with MovingWindowRateLimiter.
* ``limits sliding-window-counter, hit only``: just ``hit`` each limit: a floor for the library that gives
  neither all-or-nothing nor the headers.

    .venv/bin/python bench/rate_limit_store.py --redis-url redis://127.0.0.1:6379/8 --requests 5000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from limits import RateLimitItemPerMinute  # noqa: E402
from limits.storage import RedisStorage  # noqa: E402
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter  # noqa: E402

from serving import ratelimits  # noqa: E402

BIG = 10**9  # limits that never refuse: every admission does the whole job


def tollgate_way(url: str, n_limits: int):
    store = ratelimits.RedisStore(url, timeout_s=1.0)
    limits = tuple(ratelimits.Limit(scope, 1, kind, BIG) for scope, kind in
                   [("key", "requests"), ("key", "tokens"), ("org", "requests"), ("org", "tokens")][:n_limits])
    costs = tuple(1 if limit.kind == "requests" else 70 for limit in limits)
    return lambda: store.admit(limits, costs)


def limits_way(url: str, n_limits: int, strategy, hit_only: bool = False):
    limiter = strategy(RedisStorage(url))
    item = RateLimitItemPerMinute(BIG)
    owners = [("key", "1", "requests", 1), ("key", "1", "tokens", 70), ("org", "1", "requests", 1),
              ("org", "1", "tokens", 70)][:n_limits]

    def admit():
        if hit_only:
            for scope, owner, kind, cost in owners:
                limiter.hit(item, scope, owner, kind, cost=cost)
            return
        if all(limiter.test(item, scope, owner, kind, cost=cost) for scope, owner, kind, cost in owners):
            for scope, owner, kind, cost in owners:
                limiter.hit(item, scope, owner, kind, cost=cost)
        for scope, owner, kind, _ in owners:
            limiter.get_window_stats(item, scope, owner, kind)
    return admit


_sent = [0]
_send = redis.connection.Connection.send_packed_command


def _counting_send(self, command, check_health=True):
    _sent[0] += 1
    return _send(self, command, check_health)


redis.connection.Connection.send_packed_command = _counting_send  # round trips per admission, for both ways


def timed(admit, n: int, warmup: int) -> dict:
    for _ in range(warmup):
        admit()
    samples = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        admit()
        samples.append((time.perf_counter() - start) * 1e6)
    cpu_us = (time.process_time() - cpu) * 1e6 / n  # the web process's side of it (the client), not Redis's
    samples.sort()
    return {"p50": statistics.median(samples), "p99": samples[int(len(samples) * 0.99) - 1],
            "per_s": n / (sum(samples) / 1e6), "cpu_us": cpu_us}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3, help="each way this many times, interleaved; medians shown")
    args = ap.parse_args()
    client = redis.Redis.from_url(args.redis_url)

    rows = []
    for n_limits, round_ in [(n, r) for r in range(args.rounds) for n in (2, 4)]:
        ways = {
            "tollgate script": tollgate_way(args.redis_url, n_limits),
            "limits sliding-window-counter, full": limits_way(args.redis_url, n_limits,
                                                              SlidingWindowCounterRateLimiter),
            "limits moving-window, full": limits_way(args.redis_url, n_limits, MovingWindowRateLimiter),
            "limits sliding-window-counter, hit only": limits_way(args.redis_url, n_limits,
                                                                  SlidingWindowCounterRateLimiter, hit_only=True),
        }
        for name, admit in ways.items():
            for key in client.scan_iter("*LIMITER*"):
                client.delete(key)
            for key in client.scan_iter("tollgate:ratelimit:*"):
                client.delete(key)
            before, sent = client.info("stats")["total_commands_processed"], _sent[0]
            result = timed(admit, args.requests, args.warmup)
            admissions = args.requests + args.warmup
            result["round_trips"] = (_sent[0] - sent - 1) / admissions  # the INFO below is one
            # Commands Redis ran per admission (a script's inner calls count too), the INFO calls excluded.
            result["commands"] = (client.info("stats")["total_commands_processed"] - before - 1) / admissions
            rows.append((n_limits, name, result))
            print(f"round {round_ + 1}, {n_limits} limits, {name}: p50 {result['p50']:.0f} µs", file=sys.stderr)

    merged = []
    for n_limits in (2, 4):
        for name in dict.fromkeys(w for n, w, _ in rows if n == n_limits):
            runs = [r for n, w, r in rows if n == n_limits and w == name]
            merged.append((n_limits, name, {k: statistics.median(r[k] for r in runs) for k in runs[0]}))
    rows = merged

    print(f"\n{args.requests} admissions per row after {args.warmup} warm-up, one client, medians of "
          f"{args.rounds} interleaved rounds, cpus={os.cpu_count()}\n")
    print("| limits per request | way | p50 µs | p99 µs | admissions/s | client CPU µs | round trips / admission | "
          "Redis commands / admission | p50 vs tollgate script |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n_limits, name, r in rows:
        base = next(x for n, w, x in rows if n == n_limits and w == "tollgate script")
        print(f"| {n_limits} | {name} | {r['p50']:.0f} | {r['p99']:.0f} | {r['per_s']:.0f} | {r['cpu_us']:.0f} | "
              f"{r['round_trips']:.1f} | "
              f"{r['commands']:.1f} | {r['p50'] / base['p50']:.2f}× |")


if __name__ == "__main__":
    main()
