"""The analytics store: one ClickHouse client per process and the schema it needs.

CLICKHOUSE_DSN is `chdb:///path` for the embedded default (an in-process
ClickHouse that only one process may open at a time) or an HTTP DSN for a
ClickHouse server. The client is opened lazily, on first use, so management
commands that never touch analytics never lock the chDB folder.
"""

from __future__ import annotations

import logging
import threading

import clickhouse_connect
from django.conf import settings

logger = logging.getLogger(__name__)

_client = None
_client_lock = threading.Lock()

USAGE_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id UUID,
    request_id String,
    trace_id String,
    timestamp DateTime64(6, 'UTC'),
    org_id UInt64,
    org_slug LowCardinality(String),
    feature LowCardinality(String),
    api_key_id UInt64,
    user_id UInt64,
    endpoint LowCardinality(String),
    model_requested LowCardinality(String),
    model_served LowCardinality(String),
    pool LowCardinality(String),
    replica String,
    attempt_kind LowCardinality(String),
    status LowCardinality(String),
    error_code LowCardinality(String),
    streamed Bool,
    input_tokens UInt32,
    cached_input_tokens UInt32,
    output_tokens UInt32,
    tokens_saved UInt32,
    queue_wait_ms Float64,
    ttft_ms Nullable(Float64),
    duration_ms Float64,
    engine_seconds Float64,
    cost_input Decimal(18, 9),
    cost_output Decimal(18, 9),
    cost_gpu Decimal(18, 9),
    cost_total Decimal(18, 9),
    cache_hit Bool,
    downgraded Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (org_id, timestamp, event_id)
SETTINGS non_replicated_deduplication_window = 1000
"""

# Columns added after the first release, added to older tables in place
# (CREATE … IF NOT EXISTS never changes an existing table).
USAGE_EVENTS_ADDED_COLUMNS = [
    "chargeback_mode LowCardinality(String) DEFAULT 'tokens'",
    "cost_base Decimal(18, 9) DEFAULT 0",
    "cost_retry Decimal(18, 9) DEFAULT 0",
    "cost_escalation Decimal(18, 9) DEFAULT 0",
    "savings_cache Decimal(18, 9) DEFAULT 0",
    "savings_tokens Decimal(18, 9) DEFAULT 0",
    "discarded Bool DEFAULT false",
    "retry_attempt UInt16 DEFAULT 0",
    "tpot_ms Nullable(Float64)",
    "route_tier Nullable(UInt8)",
    "route_model LowCardinality(String) DEFAULT ''",
    "route_reason LowCardinality(String) DEFAULT ''",
    "route_score Nullable(Float32)",
    "cache_layer LowCardinality(String) DEFAULT ''",
    "batch_id String DEFAULT ''",
]

# Hourly rollup by org × feature × model × pool: what dashboards and the usage
# API read. Summing keeps sums exact (Decimal(38, 9)); the dedup window lets a
# replayed insert be dropped here too (the insert sets
# deduplicate_blocks_in_dependent_materialized_views=1).
USAGE_HOURLY_DDL = """
CREATE TABLE IF NOT EXISTS usage_hourly
(
    hour DateTime('UTC'),
    org_id UInt64,
    feature LowCardinality(String),
    model_requested LowCardinality(String),
    model_served LowCardinality(String),
    pool LowCardinality(String),
    requests UInt64,
    refused UInt64,
    errors UInt64,
    cache_hits UInt64,
    input_tokens UInt64,
    cached_input_tokens UInt64,
    output_tokens UInt64,
    tokens_saved UInt64,
    engine_seconds Float64,
    cost_input Decimal(38, 9),
    cost_output Decimal(38, 9),
    cost_gpu Decimal(38, 9),
    cost_total Decimal(38, 9),
    cost_base Decimal(38, 9),
    cost_retry Decimal(38, 9),
    cost_escalation Decimal(38, 9),
    savings_cache Decimal(38, 9),
    savings_tokens Decimal(38, 9)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (org_id, hour, feature, model_served, pool, model_requested)
SETTINGS non_replicated_deduplication_window = 1000
"""

USAGE_HOURLY_SELECT = """
SELECT
    toStartOfHour(timestamp) AS hour,
    org_id, feature, model_requested, model_served, pool,
    countIf(status != 'refused') AS requests,
    countIf(status = 'refused') AS refused,
    countIf(status = 'error') AS errors,
    countIf(cache_hit) AS cache_hits,
    sum(toUInt64(input_tokens)) AS input_tokens,
    sum(toUInt64(cached_input_tokens)) AS cached_input_tokens,
    sum(toUInt64(output_tokens)) AS output_tokens,
    sum(toUInt64(tokens_saved)) AS tokens_saved,
    sum(engine_seconds) AS engine_seconds,
    sum(toDecimal128(cost_input, 9)) AS cost_input,
    sum(toDecimal128(cost_output, 9)) AS cost_output,
    sum(toDecimal128(cost_gpu, 9)) AS cost_gpu,
    sum(toDecimal128(cost_total, 9)) AS cost_total,
    sum(toDecimal128(cost_base, 9)) AS cost_base,
    sum(toDecimal128(cost_retry, 9)) AS cost_retry,
    sum(toDecimal128(cost_escalation, 9)) AS cost_escalation,
    sum(toDecimal128(savings_cache, 9)) AS savings_cache,
    sum(toDecimal128(savings_tokens, 9)) AS savings_tokens
FROM {source}
GROUP BY hour, org_id, feature, model_requested, model_served, pool
"""

USAGE_HOURLY_MV_DDL = "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS " + (
    USAGE_HOURLY_SELECT.format(source="usage_events"))

# Daily rollup (UTC days), same grain otherwise: long ranges (30, 90 days) read
# up to 24× fewer rows than usage_hourly (17× in bench/usage_queries.py). It is fed straight from
# usage_events (not cascaded from the hourly table) and carries the same dedup
# window, so a replayed batch is dropped here too.
USAGE_DAILY_DDL = (
    USAGE_HOURLY_DDL.replace("usage_hourly", "usage_daily").replace("hour DateTime('UTC')", "day Date")
    .replace("toYYYYMM(hour)", "toYYYYMM(day)").replace("(org_id, hour,", "(org_id, day,")
)

USAGE_DAILY_SELECT = (
    USAGE_HOURLY_SELECT.replace("toStartOfHour(timestamp) AS hour", "toDate(timestamp, 'UTC') AS day")
    .replace("GROUP BY hour,", "GROUP BY day,")
)

USAGE_DAILY_MV_DDL = "CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily_mv TO usage_daily AS " + (
    USAGE_DAILY_SELECT.format(source="usage_events"))

# Rollups kept by materialized views: (view, target table, SELECT that fills the table from a source).
ROLLUPS = [
    ("usage_hourly_mv", "usage_hourly", USAGE_HOURLY_SELECT),
    ("usage_daily_mv", "usage_daily", USAGE_DAILY_SELECT),
]

# The table the OpenTelemetry Collector's ClickHouse exporter creates (Map
# attribute variant), so a real Collector can write here and Grafana's
# ClickHouse plugin reads it unchanged.
OTEL_TRACES_DDL = """
CREATE TABLE IF NOT EXISTS otel_traces
(
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested
    (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested
    (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1
"""

# Trace-id lookup table and view, as the Collector creates them for Grafana's trace view.
OTEL_TRACES_TRACE_ID_TS_DDL = """
CREATE TABLE IF NOT EXISTS otel_traces_trace_id_ts
(
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1)),
    End DateTime CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1
"""

OTEL_TRACES_TRACE_ID_TS_MV_DDL = """
CREATE MATERIALIZED VIEW IF NOT EXISTS otel_traces_trace_id_ts_mv
TO otel_traces_trace_id_ts
AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM otel_traces
WHERE TraceId != ''
GROUP BY TraceId
"""

SCHEMA = [
    USAGE_EVENTS_DDL,
    *(f"ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS {column}" for column in USAGE_EVENTS_ADDED_COLUMNS),
    USAGE_HOURLY_DDL,
    USAGE_HOURLY_MV_DDL,
    USAGE_DAILY_DDL,
    USAGE_DAILY_MV_DDL,
    OTEL_TRACES_DDL,
    OTEL_TRACES_TRACE_ID_TS_DDL,
    OTEL_TRACES_TRACE_ID_TS_MV_DDL,
]
TABLES = ["usage_events", "usage_hourly", "usage_daily", "otel_traces", "otel_traces_trace_id_ts"]

# Insert settings for usage batches: the token drops a replayed batch from
# usage_events, and the second setting drops it from the rollups as well.
# optimize_on_insert=0: the views have already grouped each block, and sorting
# and summing (or replacing) it again before writing only repeats that work
# (the rollup views cost ~40% less with it off); background merges and FINAL
# still collapse rows, and every query sums, so results are the same.
def usage_insert_settings(dedup_token: str) -> dict:
    return {"insert_deduplication_token": dedup_token, "deduplicate_blocks_in_dependent_materialized_views": 1,
            "optimize_on_insert": 0}


def get_client():
    """The process's ClickHouse client, opened (and the schema ensured) on first call."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                options = {}
                if not settings.CLICKHOUSE_DSN.startswith("chdb:"):
                    # One client is shared by request threads, the span exporter
                    # and the shipper; without a session id the HTTP client allows that.
                    options["autogenerate_session_id"] = False
                client = clickhouse_connect.get_client(dsn=settings.CLICKHOUSE_DSN, **options)
                create_schema(client)
                _client = client
                logger.info("ClickHouse opened: %s", _redacted_dsn())
    return _client


def create_schema(client=None) -> None:
    client = client or get_client()
    missing = [(table, select) for view, table, select in ROLLUPS if not client.command(f"EXISTS TABLE {view}")]
    for ddl in SCHEMA:
        client.command(ddl)
    for table, select in missing:
        # A store from before this rollup existed: fill it once from the raw table.
        client.command(f"INSERT INTO {table} " + select.format(source="usage_events FINAL"))


def truncate_all() -> None:
    """Empty every table (tests and `reset_demo` only)."""
    client = get_client()
    for table in TABLES:
        client.command(f"TRUNCATE TABLE IF EXISTS {table}")


def close_client() -> None:
    global _client
    with _client_lock:
        if _client is not None:
            try:
                _client.close()
            finally:
                _client = None


def _redacted_dsn() -> str:
    dsn = settings.CLICKHOUSE_DSN
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return dsn
