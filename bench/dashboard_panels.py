"""Benchmark: what the cost-component and GPU panels add to the org dashboard, and the staff overview.

Generates --events synthetic usage events with bench/usage_queries.py's
generator (same orgs, models, pools, rollup views), merges, then times in the
same run, interleaved, with random orgs over 30 days:

* the org dashboard's queries before issue 4 (totals, by feature, by model, per day),
* the same plus the new panels (cost components, cache hits and GPU time per pool: one query),
* the staff overview (one query by org × model × pool, folded in Python, plus pool rates).

Embedded defaults: SQLite (migrated here, for pool rates) and chDB in a temporary folder.

    .venv/bin/python bench/dashboard_panels.py [--events 2000000] [--orgs 200] [--samples 30]
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
from decimal import Decimal

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--orgs", type=int, default=200)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="tollgate-bench-panels-")
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
    from metering.models import PoolRate
    from usage_queries import generate, percentile

    call_command("migrate", verbosity=0)
    since = datetime.now(timezone.utc) - timedelta(days=365)
    PoolRate.objects.create(pool="interactive", effective_from=since, usd_per_gpu_hour=Decimal("2.50"), gpus=8,
                            gpus_per_replica=2)
    PoolRate.objects.create(pool="batch", effective_from=since, usd_per_gpu_hour=Decimal("1.20"), gpus=4)

    client = ch.get_client()
    generate(client, args.events, args.orgs, args.days, datetime.now(timezone.utc))
    for table in ("usage_events", "usage_hourly", "usage_daily"):
        client.command(f"OPTIMIZE TABLE {table} FINAL")

    rng = random.Random(7)

    def before(start, end, org):
        queries.usage_totals(org, start, end)
        queries.spend_by("feature", org, start, end)
        queries.spend_by("model", org, start, end)
        queries.spend_by_day(org, start, end, "UTC")

    def after(start, end, org):
        before(start, end, org)
        queries.cost_breakdown((org,), start, end)

    def staff(start, end, org):
        # As dashboards.views.staff_overview: the range ends at the next full hour (whole hours only).
        end = end.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        queries.platform_overview(end - timedelta(days=30), end)

    workloads = [("org dashboard before (4 queries)", before), ("org dashboard with new panels (5)", after),
                 ("staff overview (1 query + pool rates)", staff)]
    timings = {name: [] for name, _ in workloads}

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
    print(f"{args.events:,} events, {args.orgs} orgs, {args.days} days; {args.samples} samples each, interleaved\n")
    print("| page's queries | p50 ms | p95 ms | p95 vs before |")
    print("|---|---:|---:|---:|")
    for name, _ in workloads:
        t = timings[name]
        print(f"| {name} | {statistics.median(t):.1f} | {percentile(t, 0.95):.1f} | "
              f"{percentile(t, 0.95) / base:.2f}x |")


if __name__ == "__main__":
    main()
