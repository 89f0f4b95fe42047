"""Prometheus metrics for the gateway: requests, tokens, cost, cache hits and errors by org and model.

Label sets are bounded: `org` is an organization slug (admins create them),
`model` is a catalog model name (requests for unknown models never reach
settlement), `status`, `token_type` and `error_code` come from fixed sets in
our own code. Never a user, key, request or feature label.

Several web processes: set PROMETHEUS_MULTIPROC_DIR (an empty folder, wiped
at deploy) and prometheus-client keeps per-process files that `/metrics`
merges (its multiprocess mode). Without it each process reports its own
counters, which is right for one process (the embedded default).
"""

from __future__ import annotations

import threading

from django.conf import settings
from django.utils.module_loading import import_string
from prometheus_client import CollectorRegistry, Counter, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from tenants.models import Organization

from .models import UsageRecord
from .signals import ledger_row_observed

REQUESTS = Counter("tollgate_requests", "Settled gateway attempts.", ["org", "model", "status"])
TOKENS = Counter("tollgate_tokens", "Tokens processed.", ["org", "model", "token_type"])
COST = Counter("tollgate_cost_usd", "Billed cost in USD (monitoring only: the ledger is the bill).",
               ["org", "model"])
CACHE_HITS = Counter("tollgate_cache_hits", "Requests answered from a cache.", ["org", "model"])
ERRORS = Counter("tollgate_errors", "Attempts that failed or were refused.", ["org", "model", "error_code"])
SPANS_DROPPED = Counter("tollgate_spans_dropped", "Spans that could not be written to ClickHouse, even alone.")
# Every error the gateway answers, also those that never become a ledger row (bad requests, 5xx).
# Requests admitted without a rate-limit check because the rate-limit store (Redis) could not be reached.
RATE_LIMIT_STORE_ERRORS = Counter("tollgate_rate_limit_store_errors",
                                  "Requests admitted unchecked (fail open): the rate-limit store was unreachable.")
HTTP_ERRORS = Counter("tollgate_http_errors", "Error answers of the /v1 gateway.", ["endpoint", "status", "code"])


def observe_http_error(endpoint: str, status: int, code: str) -> None:
    HTTP_ERRORS.labels(endpoint, str(status), code).inc()

_slugs: dict[int, str] = {}
_slugs_lock = threading.Lock()


def knows_org(org_id: int) -> bool:
    """Whether ``observe_usage`` can label this org's rows without reading the database."""
    return org_id in _slugs


def _org_slug(org_id: int) -> str:
    slug = _slugs.get(org_id)
    if slug is None:
        slug = Organization.objects.filter(pk=org_id).values_list("slug", flat=True).first() or str(org_id)
        with _slugs_lock:
            _slugs[org_id] = slug
    return slug


def observe_usage(record) -> None:
    """Count one durable ledger row."""
    org = _org_slug(record.organization_id)
    model = record.model_served or record.model_requested
    REQUESTS.labels(org, model, record.status).inc()
    if record.input_tokens:
        TOKENS.labels(org, model, "input").inc(record.input_tokens - record.cached_input_tokens)
    if record.cached_input_tokens:
        TOKENS.labels(org, model, "cached_input").inc(record.cached_input_tokens)
    if record.output_tokens:
        TOKENS.labels(org, model, "output").inc(record.output_tokens)
    if record.cost_total:
        COST.labels(org, model).inc(float(record.cost_total))
    if record.cache_hit:
        CACHE_HITS.labels(org, model).inc()
    if record.status in ("error", "refused"):
        ERRORS.labels(org, model, record.error_code or record.status).inc()
    ledger_row_observed.send(sender=UsageRecord, record=record)


def render_metrics(*, per_org: bool) -> bytes:
    """The exposition text: this process's (or all processes') counters plus the outbox depth and the
    collectors of TOLLGATE_METRICS_EXTRA_COLLECTORS.

    ``per_org=False`` leaves out every series with an ``org`` label: what each tenant spends is not for
    whoever can reach /metrics (metering.views decides).
    """
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    outbox = CollectorRegistry()
    outbox.register(_OutboxCollector(UsageRecord.objects.filter(shipped_at__isnull=True).count()))
    for path in settings.TOLLGATE_METRICS_EXTRA_COLLECTORS:  # read at scrape time, like the outbox
        outbox.register(import_string(path)())
    return generate_latest(registry if per_org else _WithoutOrgSeries(registry)) + generate_latest(outbox)


class _WithoutOrgSeries:
    """A registry's metric families with their per-org samples left out."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if "org" not in s.labels]
            yield family


class _OutboxCollector:
    """The outbox depth, read from the database at scrape time, so every process reports the same number."""

    def __init__(self, pending: int):
        self.pending = pending

    def collect(self):
        yield GaugeMetricFamily("tollgate_usage_outbox_pending", "Ledger rows not yet shipped to ClickHouse.",
                                value=self.pending)
