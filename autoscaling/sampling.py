"""Autoscaling signals: each web process samples its pools and publishes them; anyone combines them.

Each web process runs a sampler (a daemon thread, every ``TOLLGATE_AUTOSCALE_SAMPLE_S``) that reads its
pools (``serving.pools.pool_snapshots``: admission queue, in-flight requests, replicas and their engine
numbers) and the latency of its recent ledger rows (``metering.signals.ledger_row_observed``: time to
first token and queue wait, as recorded on each row), turns counters into rates since its previous
sample, and writes the result to Django's cache (Redis in production, shared by every process; local
memory on the embedded default, where there is one process) under a key of its own with a TTL, so a
process that died drops out by itself. An index key lists the processes.

``combine`` merges the samples into one :class:`~autoscaling.recommender.PoolSignals` per pool:
admission counts and request rates add up over processes; a replica seen by several processes (every web
process scrapes the same worker) counts once, its engine numbers taken from the freshest sample, and
those add up over replicas (KV-cache use: the fullest replica); p95s are taken over the union of every
process's recent values, never averaged.

Work a pool has accepted but not yet received (a Batch API batch's lines still to be sent: the batch
runner hands a pool one line at a time) is not in any process's sample. The functions named by
``TOLLGATE_AUTOSCALE_BACKLOG_SOURCES`` report it, per pool, as :class:`PendingWork` (tokens still to
generate and when the earliest of it is due); ``combined_signals`` adds it to the pool's backlog and
sets its ``backlog_due_s``. The apps that own such work (``batches``) sit above this one, so they plug in
by setting, the way ``/metrics`` takes this app's collector, and this module never imports them.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.utils.module_loading import import_string

from .recommender import PoolSignals


logger = logging.getLogger(__name__)

_BOOT = uuid.uuid4().hex[:8]  # a restarted process with a recycled pid is still a new one


def current_process_id() -> str:
    # Read at each call, not at import: a server that forks its workers after importing (gunicorn --preload)
    # gives each its own pid.
    return f"{socket.gethostname()}:{os.getpid()}:{_BOOT}"

INDEX_KEY = "autoscale:processes"
SAMPLE_KEY = "autoscale:sample:{}"
LATENCIES_KEPT = 256  # per pool and process: enough for a p95, small enough for every sample


def sample_ttl_s() -> float:
    return max(15.0, 3 * settings.TOLLGATE_AUTOSCALE_SAMPLE_S)


# ------------------------------------------------------------------ latency window (per process)


class LatencyWindow:
    """The recent TTFT and queue wait of this process's ledger rows, per pool (thread-safe)."""

    def __init__(self, kept: int = LATENCIES_KEPT):
        self._rows: dict[str, deque] = {}
        self._kept = kept
        self._lock = threading.Lock()

    def add(self, pool: str, ttft_s: float | None, queue_wait_s: float, at: float | None = None) -> None:
        with self._lock:
            rows = self._rows.get(pool)
            if rows is None:
                rows = self._rows[pool] = deque(maxlen=self._kept)
            rows.append((time.monotonic() if at is None else at, ttft_s, queue_wait_s))

    def recent(self, pool: str, window_s: float) -> tuple[list[float], list[float]]:
        since = time.monotonic() - window_s
        with self._lock:
            rows = [r for r in self._rows.get(pool, ()) if r[0] >= since]
        return [r[1] for r in rows if r[1] is not None], [r[2] for r in rows]

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


latencies = LatencyWindow()


def observe_ledger_row(sender, record, **kwargs) -> None:
    """metering.signals.ledger_row_observed: a row whose engine ran adds its TTFT and queue wait."""
    if not record.pool or not record.replica or record.attempt_kind == "cache_hit":
        return
    ttft = record.ttft_ms / 1000.0 if record.ttft_ms is not None else None
    latencies.add(record.pool, ttft, (record.queue_wait_ms or 0.0) / 1000.0)


# ------------------------------------------------------------------ one process's sample


class Sampler:
    """Builds this process's samples; keeps the counters of the previous one to turn them into rates."""

    def __init__(self, process_id: str | None = None, window: LatencyWindow = latencies, clock=time.monotonic):
        self.process_id = process_id or current_process_id()
        self.window = window
        self.clock = clock  # seconds, monotonic: rates are counter deltas over its deltas
        self._last: dict[str, tuple[float, float]] = {}  # counter key -> (monotonic time, value)

    def _rate(self, key: str, value: float, now: float) -> float:
        last = self._last.get(key)
        self._last[key] = (now, value)
        if last is None or now <= last[0] or value < last[1]:  # first sample, or the counter restarted
            return 0.0
        return (value - last[1]) / (now - last[0])

    def sample(self, snapshots=None, now: datetime | None = None) -> dict:
        """A plain-data sample of every pool this process runs (``snapshots``: serving.pools.pool_snapshots())."""
        if snapshots is None:
            # Here, not at the top: processes that only combine (a Celery worker, /metrics) never load
            # serving's engines.
            from serving.pools import pool_snapshots

            snapshots = pool_snapshots()
        mono = self.clock()
        window_s = settings.TOLLGATE_AUTOSCALE_WINDOW_S
        pools = {}
        for p in snapshots:
            replicas = {}
            for r in p.replicas:
                key = r.url or f"{r.label}@{self.process_id}"  # in-process engines are one per process
                e = r.engine
                tokens = e.get("prompt_tokens", 0.0) + e.get("generation_tokens", 0.0)
                replicas[key] = {
                    "healthy": r.healthy,
                    "outstanding": r.outstanding,
                    "running": e.get("running"),
                    "waiting": e.get("waiting"),
                    "kv_cache_usage": e.get("kv_cache_usage"),
                    "tokens_per_s": (self._rate(f"tok:{p.name}:{key}", tokens, mono)
                                     if "prompt_tokens" in e or "generation_tokens" in e else 0.0),
                    "busy_share": (min(1.0, self._rate(f"busy:{p.name}:{key}", e["busy_seconds"], mono))
                                   if "busy_seconds" in e else None),
                }
            ttfts, waits = self.window.recent(p.name, window_s)
            pools[p.name] = {
                "kind": p.kind, "capacity_per_replica": p.max_in_flight_per_replica,
                "in_flight": p.in_flight, "waiting": p.waiting,
                "requests_per_s": self._rate(f"req:{p.name}", float(p.admitted_total), mono),
                "ttft_s": ttfts[-LATENCIES_KEPT:], "queue_wait_s": waits[-LATENCIES_KEPT:],
                "replicas": replicas,
            }
        return {"process": self.process_id, "at": (now or datetime.now(UTC)).isoformat(), "pools": pools}


def publish(sample: dict) -> None:
    """Write one process's sample to the shared store and list the process in the index."""
    ttl = sample_ttl_s()
    cache.set(SAMPLE_KEY.format(sample["process"]), sample, timeout=ttl)
    now = time.time()
    # Read-modify-write: two processes writing at the same instant may drop one of them from the index
    # until its next sample re-adds it (one sample at most); its own key is untouched meanwhile.
    index = {p: exp for p, exp in (cache.get(INDEX_KEY) or {}).items() if exp > now}
    index[sample["process"]] = now + ttl
    cache.set(INDEX_KEY, index, timeout=None)


def published_samples() -> list[dict]:
    """Every live process's latest sample."""
    index = cache.get(INDEX_KEY) or {}
    now = time.time()
    keys = [SAMPLE_KEY.format(p) for p, exp in index.items() if exp > now]
    found = cache.get_many(keys) if keys else {}
    return [found[k] for k in keys if k in found]


# ------------------------------------------------------------------ combining


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def combine(samples: list[dict], at: datetime | None = None) -> dict[str, PoolSignals]:
    """One PoolSignals per pool from every process's sample (see the module docstring for the rules)."""
    at = at or datetime.now(UTC)
    by_pool: dict[str, list[tuple[str, dict]]] = {}
    for s in sorted(samples, key=lambda s: s["at"]):  # oldest first: a later sample's replica numbers win
        for name, pool in s["pools"].items():
            by_pool.setdefault(name, []).append((s["at"], pool))
    out = {}
    for name, seen in by_pool.items():
        replicas: dict[str, dict] = {}
        healthy: set[str] = set()
        ttfts: list[float] = []
        waits: list[float] = []
        in_flight = queue = 0
        requests_per_s = 0.0
        capacity = 0
        for _, pool in seen:
            in_flight += pool["in_flight"]
            queue += pool["waiting"]
            requests_per_s += pool["requests_per_s"]
            capacity = max(capacity, pool["capacity_per_replica"])
            ttfts += pool["ttft_s"]
            waits += pool["queue_wait_s"]
            for key, r in pool["replicas"].items():
                replicas[key] = r
                if r["healthy"]:
                    healthy.add(key)
        ready = len(healthy)
        engine_running = [r["running"] for r in replicas.values() if r["running"] is not None]
        running = int(sum(engine_running)) if engine_running else in_flight
        waiting = int(sum(r["waiting"] or 0 for r in replicas.values()))
        busy = [r["busy_share"] for k, r in replicas.items() if r["busy_share"] is not None and k in healthy]
        engine_busy = sum(busy) / len(busy) if busy else 0.0
        if capacity and ready:
            slot_share = min(1.0, max(in_flight, running) / (capacity * ready))
        else:
            slot_share = engine_busy
        tokens_per_s = sum(r["tokens_per_s"] or 0.0 for r in replicas.values())
        tokens_per_request = tokens_per_s / requests_per_s if requests_per_s > 0 else 0.0
        out[name] = PoolSignals(
            pool=name, kind=seen[-1][1]["kind"], at=at, replicas=ready, queue_depth=queue,
            queue_wait_p95_s=p95(waits) or 0.0, running=running, waiting=waiting,
            kv_cache_usage=max((r["kv_cache_usage"] or 0.0 for r in replicas.values()), default=0.0),
            tokens_per_s=tokens_per_s, requests_per_s=requests_per_s, ttft_p95_s=p95(ttfts),
            busy_share=slot_share, capacity_per_replica=capacity,
            # Work accepted and not yet running, in tokens: requests waiting x tokens a request takes.
            backlog_tokens=round((queue + waiting) * tokens_per_request),
            engine_busy_share=engine_busy,
        )
    return out


@dataclass(frozen=True)
class PendingWork:
    """Work a pool has accepted and not yet received: output tokens still to generate (an estimate: each
    request's max_tokens) and when the earliest of it must be done (aware UTC; None: no deadline)."""

    tokens: int
    due: datetime | None = None
    kind: str = "batch"  # the pool's kind, for a pool no process samples (scaled to zero)


def pending_work() -> dict[str, PendingWork]:
    """Every backlog source's report, per pool: tokens add up, the earliest due time wins.

    A source that fails is logged and left out: the pools' own signals still scale them."""
    out: dict[str, PendingWork] = {}
    for path in settings.TOLLGATE_AUTOSCALE_BACKLOG_SOURCES:  # read at each call, like the metrics collectors
        try:
            reported = import_string(path)()
        except Exception:
            logger.exception("autoscaling backlog source %s failed", path)
            continue
        for pool, work in reported.items():
            seen = out.get(pool)
            if seen is not None:
                dues = [d for d in (seen.due, work.due) if d is not None]
                work = PendingWork(seen.tokens + work.tokens, min(dues) if dues else None, seen.kind)
            out[pool] = work
    return out


def add_pending(signals: dict[str, PoolSignals], pending: dict[str, PendingWork],
                at: datetime) -> dict[str, PoolSignals]:
    """The signals with each pool's pending work in its backlog and its due time in ``backlog_due_s``.

    A pool with pending work and no sample (no process runs it now, e.g. scaled to zero) gets a signal of
    its own with no replicas, so the recommender can start one for the work waiting."""
    out = dict(signals)
    for pool, work in pending.items():
        if not work.tokens:
            continue
        s = out.get(pool) or PoolSignals(
            pool=pool, kind=work.kind, at=at, replicas=0, queue_depth=0, queue_wait_p95_s=0.0, running=0,
            waiting=0, kv_cache_usage=0.0, tokens_per_s=0.0, requests_per_s=0.0, ttft_p95_s=None, busy_share=0.0)
        due_s = (work.due - at).total_seconds() if work.due is not None else None
        if s.backlog_due_s is not None and due_s is not None:
            due_s = min(due_s, s.backlog_due_s)
        out[pool] = replace(s, backlog_tokens=s.backlog_tokens + work.tokens,
                            backlog_due_s=due_s if due_s is not None else s.backlog_due_s)
    return out


def combined_signals(at: datetime | None = None) -> dict[str, PoolSignals]:
    at = at or datetime.now(UTC)
    return add_pending(combine(published_samples(), at), pending_work(), at)


def sample_and_publish(sampler: Sampler) -> dict:
    sample = sampler.sample()
    publish(sample)
    return sample
