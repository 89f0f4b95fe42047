"""The autoscaling gauges on /metrics, read at scrape time from the shared store and the database.

Per pool (label ``pool`` only): the combined signals of every web process and the desired count, so
every process (and Prometheus multiprocess mode) reports the same numbers, like the outbox depth.
metering's /metrics adds this collector through TOLLGATE_METRICS_EXTRA_COLLECTORS (metering sits below
autoscaling and never imports it).
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from . import sampling
from .models import PoolScaling

# (metric name, help, PoolSignals field)
SIGNAL_GAUGES = (
    ("tollgate_pool_replicas", "Replicas ready (healthy) in the pool.", "replicas"),
    ("tollgate_pool_queue_depth", "Requests waiting in the gateway's admission queues (all web processes).",
     "queue_depth"),
    ("tollgate_pool_queue_wait_p95_seconds", "p95 queue wait of the pool's recent requests.", "queue_wait_p95_s"),
    ("tollgate_pool_running", "Sequences running in the pool's engines.", "running"),
    ("tollgate_pool_waiting", "Sequences waiting inside the pool's engines.", "waiting"),
    ("tollgate_pool_kv_cache_usage", "KV-cache use of the pool's fullest replica (0 to 1).", "kv_cache_usage"),
    ("tollgate_pool_tokens_per_second", "Prompt and generated tokens a second, all replicas.", "tokens_per_s"),
    ("tollgate_pool_requests_per_second", "Requests admitted a second, all web processes.", "requests_per_s"),
    ("tollgate_pool_ttft_p95_seconds", "p95 time to first token of the pool's recent requests.", "ttft_p95_s"),
    ("tollgate_pool_busy_share", "Share of the pool's request slots in use (0 to 1).", "busy_share"),
    ("tollgate_pool_engine_busy_share", "Share of wall time the engines spent computing (0 to 1).",
     "engine_busy_share"),
)


class AutoscalingCollector:
    def collect(self):
        signals = sampling.combined_signals()
        for name, help_text, field in SIGNAL_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["pool"])
            for pool, s in sorted(signals.items()):
                value = getattr(s, field)
                if value is not None:
                    family.add_metric([pool], float(value))
            yield family
        desired = GaugeMetricFamily("tollgate_pool_desired_replicas",
                                    "Replicas the autoscaler recommends for the pool.", labels=["pool"])
        for pool, count in PoolScaling.objects.filter(enabled=True, desired_replicas__isnull=False).values_list(
                "pool", "desired_replicas"):
            desired.add_metric([pool], float(count))
        yield desired
