"""Benchmark: the dashboard pages of issue 11 against the org page as it was before it.

Generates --events synthetic usage events with bench/usage_queries.py's generator
(orgs, features, models, 3 API keys and 20 users per org), merges, then times in the
same run, interleaved, with random orgs over 30 days, each page's ClickHouse queries:

* baseline: the org page before issue 11 (totals, by feature, by model, per day, cost breakdown);
* the org page now (the same plus top API keys and top users, read from usage_events);
* the org page filtered by a feature, and by an API key (every panel from usage_events);
* the request log's first page (count + 50 newest attempts);
* the monthly statement (one query, feature x model, over the previous 30 days);
* the savings page's routing panel (one raw query, day x tier x reason, `model: "auto"` only);
* the staff GPU page's charts over time, every org (utilization per pool per hour from the hourly rollup,
  queue wait p50/p95 per pool per hour from the raw events).

Embedded defaults: SQLite (migrated here) and chDB in a temporary folder.

    .venv/bin/python bench/dashboard_pages.py [--events 10000000] [--orgs 200] [--samples 20]
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

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--orgs", type=int, default=200)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="tollgate-bench-pages-")
    os.environ["CLICKHOUSE_DSN"] = f"chdb:///{folder}/ch"
    os.environ["TOLLGATE_VAR_DIR"] = folder
    os.environ["TOLLGATE_INPROCESS_SHIPPER"] = "false"
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from metering import clickhouse as ch
    from metering import queries
    from usage_queries import generate, percentile

    call_command("migrate", verbosity=0)
    from metering.models import PoolRate

    for pool in ("interactive", "batch"):  # the generator's two pools, rated for the whole range
        PoolRate.objects.get_or_create(pool=pool, effective_from=datetime.now(timezone.utc) - timedelta(days=400),
                                       defaults={"usd_per_gpu_hour": 2, "gpus": 8})
    client = ch.get_client()
    t0 = time.perf_counter()
    generate(client, args.events, args.orgs, args.days, datetime.now(timezone.utc))
    for table in ("usage_events", "usage_hourly", "usage_daily"):
        client.command(f"OPTIMIZE TABLE {table} FINAL")
    print(f"generated and merged in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def before(start, end, org, **narrow):
        queries.usage_totals(org, start, end, **narrow)
        queries.spend_by("feature", org, start, end, **narrow)
        queries.spend_by("model", org, start, end, **narrow)
        queries.spend_by_day(org, start, end, "UTC", **narrow)
        queries.cost_breakdown((org,), start, end, **narrow)

    def now_page(start, end, org, **narrow):
        before(start, end, org, **narrow)
        queries.top_spenders("key", org, start, end, **narrow)
        queries.top_spenders("user", org, start, end, **narrow)

    workloads = [
        ("org page before issue 11 (5 queries) — baseline", lambda s, e, o: before(s, e, o)),
        ("org page now (7 queries: + top keys, top users)", lambda s, e, o: now_page(s, e, o)),
        ("org page, ?feature= (7 queries)", lambda s, e, o: now_page(s, e, o, feature="chat")),
        ("org page, ?key= (7 queries, all raw)", lambda s, e, o: now_page(s, e, o, api_key_id=o * 10)),
        ("request log, first page (count + 50 rows)", lambda s, e, o: queries.request_log(o, s, e, limit=50)),
        ("monthly statement (1 query)", lambda s, e, o: queries.chargeback_statement(o, s, e)),
        ("savings page, routing panel (1 raw query)", lambda s, e, o: queries.routing(o, s, e, "UTC")),
        ("staff GPU over time, all orgs (2 queries)",
         lambda s, e, o: (queries.pool_utilization_by_hour(s, e), queries.queue_wait_by_hour(s, e))),
    ]
    timings = {name: [] for name, _ in workloads}
    rng = random.Random(11)

    def one(run):
        end = datetime.now(timezone.utc)
        run(end - timedelta(days=30), end, rng.randint(1, args.orgs))

    for _, run in workloads:
        one(run)  # warm-up
    for _ in range(args.samples):
        for name, run in workloads:
            t0 = time.perf_counter()
            one(run)
            timings[name].append((time.perf_counter() - t0) * 1000)

    base = percentile(timings[workloads[0][0]], 0.95)
    print(f"{args.events:,} events, {args.orgs} orgs, {args.days} days; {args.samples} samples each, interleaved; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| page's queries | p50 ms | p95 ms | p95 vs baseline |")
    print("|---|---:|---:|---:|")
    for name, _ in workloads:
        t = timings[name]
        print(f"| {name} | {statistics.median(t):.1f} | {percentile(t, 0.95):.1f} | "
              f"{percentile(t, 0.95) / base:.2f}x |")


if __name__ == "__main__":
    main()
