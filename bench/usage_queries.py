"""Benchmark: dashboard and usage-API queries over millions of usage events, rollups vs the raw table.

Generates --events synthetic usage events (default 10 million) spread over
90 days and 200 orgs inside embedded ClickHouse (an INSERT … SELECT from
numbers(), in chunks, through the real hourly and daily rollup views), merges
all three tables (steady state), then times, in the same run and interleaved:

* the org dashboard (metering.queries as dashboards/views.py calls them:
  totals, spend by feature, spend by model, spend per day over 30 days)
  for random orgs, and
* the staff usage API (spend per org over 30 days, and per org × model over
  90 days),

each read three ways: as shipped (`usage_summary`: daily rollup for whole
UTC days, hourly for whole hours, raw for partial hours), through the hourly
rollup only (`use_daily=False`, how it read before the daily rollup), and
forced onto the raw table with FINAL (`use_rollup=False`). Prints p50/p95 in ms.

    .venv/bin/python bench/usage_queries.py [--events 10000000] [--orgs 200] [--samples 40]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHUNK = 1_000_000


def generate(client, events: int, orgs: int, days: int, end: datetime) -> None:
    """Each org uses 3 of 6 features; models skewed 60/30/10; two pools; minute-level timestamps."""
    span_s = days * 86400
    end_s = int(end.timestamp())
    for offset in range(0, events, CHUNK):
        n = min(CHUNK, events - offset)
        client.command(f"""
            INSERT INTO usage_events (event_id, request_id, trace_id, timestamp, org_id, org_slug, feature,
                api_key_id, user_id, endpoint, model_requested, model_served, pool, replica, attempt_kind, status,
                error_code, streamed, input_tokens, cached_input_tokens, output_tokens, tokens_saved, queue_wait_ms,
                ttft_ms, duration_ms, engine_seconds, cost_input, cost_output, cost_gpu, cost_total, cache_hit,
                downgraded, chargeback_mode, cost_base, cost_retry, cost_escalation, savings_cache, savings_tokens,
                discarded, retry_attempt)
            SELECT
                generateUUIDv7(), hex(number + {offset}), '',
                toDateTime64({end_s} - (cityHash64(number + {offset}, 1) % {span_s}), 6, 'UTC'),
                org, concat('org-', toString(org)),
                arrayElement(['chat', 'search', 'summarise', 'agent', 'extract', 'translate'],
                             1 + (org + cityHash64(number + {offset}, 3) % 3) % 6),
                org * 10 + cityHash64(number + {offset}, 4) % 3, org * 100 + cityHash64(number + {offset}, 5) % 20,
                'chat.completions', model, model, if(h % 10 = 0, 'batch', 'interactive'), 'r1',
                'primary', if(h % 50 = 0, 'error', 'ok'), '', false,
                in_tok, 0, out_tok, 0, 1.0, 20.0, 300.0, 0.2,
                toDecimal64(in_tok * price_in / 1000000, 9), toDecimal64(out_tok * price_out / 1000000, 9),
                toDecimal64(0, 9),
                if(h % 50 = 0, toDecimal64(0, 9),
                   toDecimal64(in_tok * price_in / 1000000, 9) + toDecimal64(out_tok * price_out / 1000000, 9)),
                h % 7 = 0, false, 'tokens',
                if(h % 50 = 0, toDecimal64(0, 9),
                   toDecimal64(in_tok * price_in / 1000000, 9) + toDecimal64(out_tok * price_out / 1000000, 9)),
                toDecimal64(0, 9), toDecimal64(0, 9), toDecimal64(0, 9), toDecimal64(0, 9), false, 0
            FROM (
                SELECT number,
                       1 + cityHash64(number + {offset}, 2) % {orgs} AS org,
                       cityHash64(number + {offset}, 6) AS h,
                       multiIf(h % 10 < 6, 'tollgate-mini', h % 10 < 9, 'tollgate-small', 'tollgate-large') AS model,
                       multiIf(h % 10 < 6, toDecimal64('0.10', 6), h % 10 < 9, toDecimal64('0.50', 6),
                               toDecimal64('3.00', 6)) AS price_in,
                       multiIf(h % 10 < 6, toDecimal64('0.40', 6), h % 10 < 9, toDecimal64('1.50', 6),
                               toDecimal64('15.00', 6)) AS price_out,
                       toUInt32(20 + cityHash64(number + {offset}, 7) % 2000) AS in_tok,
                       toUInt32(1 + cityHash64(number + {offset}, 8) % 500) AS out_tok
                FROM numbers({n})
            )
        """)
        print(f"  generated {offset + n:,} events", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--orgs", type=int, default=200)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="tollgate-bench-queries-")
    os.environ["CLICKHOUSE_DSN"] = f"chdb:///{folder}/ch"
    os.environ["TOLLGATE_VAR_DIR"] = folder
    os.environ["TOLLGATE_INPROCESS_SHIPPER"] = "false"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
    import django

    django.setup()
    from metering import clickhouse as ch
    from metering import queries

    client = ch.get_client()
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    generate(client, args.events, args.orgs, args.days, now)
    generated_s = time.perf_counter() - started
    started = time.perf_counter()
    client.command("OPTIMIZE TABLE usage_events FINAL")
    client.command("OPTIMIZE TABLE usage_hourly FINAL")
    client.command("OPTIMIZE TABLE usage_daily FINAL")
    merged_s = time.perf_counter() - started
    raw_rows = client.query("SELECT count() FROM usage_events").result_rows[0][0]
    rollup_rows = client.query("SELECT count() FROM usage_hourly").result_rows[0][0]
    daily_rows = client.query("SELECT count() FROM usage_daily").result_rows[0][0]
    raw_cost = client.query("SELECT sum(cost_total) FROM usage_events").result_rows[0][0]
    rollup_cost = client.query("SELECT sum(cost_total) FROM usage_hourly").result_rows[0][0]
    daily_cost = client.query("SELECT sum(cost_total) FROM usage_daily").result_rows[0][0]
    assert raw_cost == rollup_cost == daily_cost, (raw_cost, rollup_cost, daily_cost)

    rng = random.Random(11)

    # mode -> usage_summary keyword arguments
    modes = {"tiered": {}, "hourly": {"use_daily": False}, "raw": {"use_rollup": False}}

    def org_dashboard(mode: dict):
        org = rng.randint(1, args.orgs)
        end = datetime.now(timezone.utc)
        f = queries.UsageFilter(start=end - timedelta(days=30), end=end, org_ids=(org,))
        # The same calls as queries.usage_totals / spend_by / spend_by_day make for dashboards/views.py.
        measures = queries.DASHBOARD_MEASURES
        queries.usage_summary(f, measures=measures, **mode)
        queries.usage_summary(f, ["feature"], measures=measures, **mode)
        queries.usage_summary(f, ["model"], measures=measures, **mode)
        queries.usage_summary(f, ["day"], measures=["cost_total"], **mode)

    def staff_by_org_30d(mode: dict):
        end = datetime.now(timezone.utc)
        queries.usage_summary(queries.UsageFilter(start=end - timedelta(days=30), end=end), ["org"],
                              limit=100, measures=queries.DASHBOARD_MEASURES, **mode)

    def staff_by_org_model_90d(mode: dict):
        end = datetime.now(timezone.utc)
        queries.usage_summary(queries.UsageFilter(start=end - timedelta(days=90), end=end), ["org", "model"],
                              limit=100, measures=queries.DASHBOARD_MEASURES, **mode)

    workloads = [
        ("org dashboard, 30 days (4 queries)", org_dashboard),
        ("staff: spend by org, 30 days", staff_by_org_30d),
        ("staff: spend by org × model, 90 days", staff_by_org_model_90d),
    ]
    timings = {(name, mode): [] for name, _ in workloads for mode in modes}
    for name, run in workloads:  # warm-up
        for mode in modes.values():
            run(mode)
    for _ in range(args.samples):
        for name, run in workloads:
            for mode, kwargs in modes.items():
                t0 = time.perf_counter()
                run(kwargs)
                timings[(name, mode)].append((time.perf_counter() - t0) * 1000)

    print(f"{raw_rows:,} events, {args.orgs} orgs, {args.days} days; hourly rollup holds {rollup_rows:,} rows, "
          f"daily rollup {daily_rows:,}; generated in {generated_s:.0f} s, merged in {merged_s:.0f} s; "
          f"{args.samples} samples each, interleaved; chDB folder {folder}\n")
    print("| query | shipped (daily + hourly + raw edges) p50 ms | p95 ms | hourly rollup only p50 ms | p95 ms "
          "| raw (FINAL) p50 ms | p95 ms | p95 speed-up vs hourly | vs raw |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, _ in workloads:
        t, h, w = (timings[(name, mode)] for mode in modes)
        print(f"| {name} | {statistics.median(t):.1f} | {percentile(t, 0.95):.1f} | {statistics.median(h):.1f} | "
              f"{percentile(h, 0.95):.1f} | {statistics.median(w):.1f} | {percentile(w, 0.95):.1f} | "
              f"{percentile(h, 0.95) / percentile(t, 0.95):.1f}x | {percentile(w, 0.95) / percentile(t, 0.95):.1f}x |")


if __name__ == "__main__":
    main()
