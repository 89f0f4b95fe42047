"""Benchmark: what the autoscaler costs. Three numbers, each the median of several timed runs:

* ``recommend``: one decision (autoscaling/recommender.py), over a scripted day of 15-second signals for one
  pool (load rising, a spike, then quiet): what the periodic task spends per pool and what the capacity
  planner spends per replayed step.
* ``combine``: merging the samples of N web processes (each with P pools of R replicas) into one signal per
  pool, from plain data (the part /metrics and the task do on every scrape and run, besides the cache read).
* ``ledger row hook``: the per-request cost on the hot path: metering's ``ledger_row_observed`` signal sent
  for one ledger row with the autoscaler's receiver connected (the row's TTFT and queue wait go into the
  process's latency window).

    .venv/bin/python bench/autoscaling.py [--processes 16 --pools 3 --replicas 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
os.environ.setdefault("TOLLGATE_AUTOSCALE_SAMPLE_S", "0")

import django  # noqa: E402

django.setup()

from autoscaling.recommender import PoolSignals, PoolSLO, ScalingPolicy, recommend  # noqa: E402
from autoscaling.sampling import LatencyWindow, Sampler, combine  # noqa: E402
from metering.models import UsageRecord  # noqa: E402
from metering.signals import ledger_row_observed  # noqa: E402
from serving.pools import PoolSnapshot, ReplicaSnapshot  # noqa: E402


def day_of_signals() -> list[PoolSignals]:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    out = []
    for i in range(24 * 3600 // 15):
        hour = i * 15 / 3600
        busy = min(1.0, 0.2 + 0.6 * abs(((hour % 24) - 12) / 12 - 1))
        queue = 60 if 10 <= hour < 10.5 else 0
        out.append(PoolSignals(pool="interactive", kind="interactive", at=t0 + timedelta(seconds=15 * i), replicas=4,
                               queue_depth=queue, queue_wait_p95_s=0.05, running=int(busy * 128), waiting=0,
                               kv_cache_usage=busy, tokens_per_s=2000 * busy, requests_per_s=40 * busy,
                               ttft_p95_s=0.3 + busy, busy_share=busy, capacity_per_replica=32))
    return out


def timed(fn, runs=5) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=8)
    args = parser.parse_args()

    signals = day_of_signals()
    slo, policy = PoolSLO(ttft_p95_s=1.0), ScalingPolicy(min_replicas=1, max_replicas=16)

    def replay():
        state = None
        for s in signals:
            _, state = recommend(s, slo, policy, state)

    per_decision = timed(replay) / len(signals)
    print(f"recommend: {per_decision * 1e6:.1f} us a decision ({len(signals)} decisions, one pool, one day)")

    samples = []
    for p in range(args.processes):
        window = LatencyWindow()
        for i in range(256):
            for k in range(args.pools):
                window.add(f"pool-{k}", 0.1 + i / 1000, 0.01)
        snapshots = [PoolSnapshot(
            name=f"pool-{k}", kind="interactive", max_in_flight_per_replica=32, in_flight=10, waiting=3,
            admitted_total=1000, replicas=tuple(ReplicaSnapshot(
                label=f"http://gpu-{k}-{r}:8000", url=f"http://gpu-{k}-{r}:8000", healthy=True, outstanding=2,
                engine={"running": 10, "waiting": 1, "kv_cache_usage": 0.5, "prompt_tokens": 1e6,
                        "generation_tokens": 1e6, "busy_seconds": 100.0}) for r in range(args.replicas)))
            for k in range(args.pools)]
        samples.append(Sampler(f"web-{p}", window).sample(snapshots))
    per_combine = timed(lambda: combine(samples), runs=20)
    print(f"combine: {per_combine * 1e3:.2f} ms for {args.processes} processes x {args.pools} pools x "
          f"{args.replicas} replicas (256 latencies a pool and process)")

    row = UsageRecord(pool="interactive", replica="http://gpu-0-0:8000", attempt_kind="primary", ttft_ms=120.0,
                      queue_wait_ms=3.0)
    n = 100_000

    def send():
        for _ in range(n):
            ledger_row_observed.send(sender=UsageRecord, record=row)

    print(f"ledger row hook: {timed(send, runs=3) / n * 1e6:.2f} us a row")


if __name__ == "__main__":
    main()
