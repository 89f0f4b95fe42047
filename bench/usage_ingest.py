"""Benchmark: usage events shipped into embedded ClickHouse (chDB) per second.

Rows are shaped exactly as the outbox shipper reads them from the ledger
(metering.shipping's field order, Decimal money, UUIDv7 ids, aware datetimes).
Variants, all in one run, each into a fresh copy of the schema in one chDB
folder:

* ``shipper insert``: batches of --batch rows through
  ``metering.shipping.insert_usage_rows`` (one Arrow table per batch, insert
  deduplication token, dedup through the hourly and daily rollup views);
* ``before``: the same batches through clickhouse-connect's ``insert()``
  with Python rows, ``optimize_on_insert`` on and the hourly view only (how
  the shipper sent them before; the baseline for this change), and the same
  with both views (what the daily view alone costs);
* ``column-oriented insert``: the same through ``insert(column_oriented=True)``;
* ``raw table only``: the Arrow batches into a usage_events table with no
  rollup view and no token (what the rollups and dedup cost is measured
  against);
* ``small batches``: the shipper insert with batches of 100 rows;
* ``outbox end to end`` (with --database-url): ledger rows in PostgreSQL
  claimed, read, inserted and marked by ``ship_pending_usage`` itself.

    .venv/bin/python bench/usage_ingest.py [--events 200000] [--batch 5000] \
        [--database-url postgres://postgres@127.0.0.1:5432/tollgate_bench]

Prints a markdown table of events/s (median of --repeats).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_rows(n: int, seed: int = 7) -> list[list]:
    import uuid6

    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    models = ["tollgate-mini", "tollgate-small", "tollgate-large"]
    rows = []
    for i in range(n):
        inp, out = rng.randint(20, 2000), rng.randint(1, 500)
        cost_in = (Decimal(inp) * Decimal("0.10") / 1_000_000).quantize(Decimal("0.000000001"))
        cost_out = (Decimal(out) * Decimal("0.40") / 1_000_000).quantize(Decimal("0.000000001"))
        total = cost_in + cost_out
        rows.append([
            uuid6.uuid7(), uuid.uuid4().hex, "", now - timedelta(seconds=rng.randint(0, 86400)), rng.randint(1, 200),
            "org", rng.choice(["chat", "search", "summarise"]), rng.randint(1, 1000), 0, "chat.completions",
            rng.choice(models), rng.choice(models), "interactive", "r1", "primary", "ok", "", False, inp, 0, out, 0,
            1.0, 20.0, 300.0, 0.3, cost_in, cost_out, Decimal(0), total, False, False, "tokens", total, Decimal(0),
            Decimal(0), Decimal(0), Decimal(0), False, 0, rng.choice([None, 12.5]),
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="tollgate-bench-ingest-")
    os.environ["CLICKHOUSE_DSN"] = f"chdb:///{folder}/ch"
    os.environ["TOLLGATE_VAR_DIR"] = folder
    os.environ["TOLLGATE_INPROCESS_SHIPPER"] = "false"
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
    import django

    django.setup()
    from metering import clickhouse as ch
    from metering.shipping import USAGE_COLUMNS, insert_usage_rows, usage_batch_table

    client = ch.get_client()
    rows = synthetic_rows(args.events)

    def fresh(views: tuple) -> None:
        for view, table, _ in ch.ROLLUPS:
            client.command(f"DROP TABLE IF EXISTS {view}")
            client.command(f"DROP TABLE IF EXISTS {table}")
        client.command("DROP TABLE IF EXISTS usage_events")
        client.command(ch.USAGE_EVENTS_DDL)
        for column in ch.USAGE_EVENTS_ADDED_COLUMNS:
            client.command(f"ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS {column}")
        for ddl in views:
            client.command(ddl)

    def shipper_insert(chunk: list, token: str) -> None:
        insert_usage_rows(chunk, token)

    def rowwise_insert(chunk: list, token: str) -> None:
        # As the shipper sent batches before: Python rows, and the block merged again on insert.
        chunk = [[*row[:7], row[7] or 0, row[8] or 0, *row[9:]] for row in chunk]  # null ids -> 0
        settings = dict(ch.usage_insert_settings(token), optimize_on_insert=1)
        client.insert("usage_events", chunk, column_names=USAGE_COLUMNS, settings=settings)

    def column_insert(chunk: list, token: str) -> None:
        columns = [list(values) for values in zip(*chunk)]
        columns[7] = [v or 0 for v in columns[7]]
        columns[8] = [v or 0 for v in columns[8]]
        client.insert("usage_events", columns, column_names=USAGE_COLUMNS, column_oriented=True,
                      settings=ch.usage_insert_settings(token))

    def arrow_no_token(chunk: list, token: str) -> None:
        client.insert_arrow("usage_events", usage_batch_table(chunk))

    def insert_all(insert, batch: int) -> float:
        # Small batches are slow by nature: time them on a tenth of the rows.
        subset = rows if batch >= 1000 else rows[: max(batch, len(rows) // 10)]
        started = time.perf_counter()
        for start in range(0, len(subset), batch):
            insert(subset[start:start + batch], uuid.uuid4().hex)
        return len(subset) / (time.perf_counter() - started)

    b = args.batch
    both = (ch.USAGE_HOURLY_DDL, ch.USAGE_HOURLY_MV_DDL, ch.USAGE_DAILY_DDL, ch.USAGE_DAILY_MV_DDL)
    hourly = both[:2]
    variants = [
        (f"shipper insert: Arrow (batches of {b}, dedup token, hourly + daily rollup views)", both, shipper_insert,
         b),
        (f"before: row-wise insert(), optimize_on_insert on (batches of {b}, hourly view only)", hourly,
         rowwise_insert, b),
        (f"row-wise insert(), optimize_on_insert on (batches of {b}, both views)", both, rowwise_insert, b),
        (f"column-oriented insert() (batches of {b}, shipper's settings, both views)", both, column_insert, b),
        (f"raw table only: Arrow (batches of {b}, no rollups, no token)", (), arrow_no_token, b),
        ("shipper insert, small batches of 100", both, shipper_insert, 100),
    ]
    results: dict[str, list[float]] = {name: [] for name, *_ in variants}
    insert_usage_rows(rows[:10], uuid.uuid4().hex)  # warm-up: first-use imports inside clickhouse-connect
    for _ in range(args.repeats):
        for name, views, insert, batch in variants:
            fresh(views)
            results[name].append(insert_all(insert, batch))
            print(f"  {name}: {results[name][-1]:,.0f} events/s", file=sys.stderr, flush=True)
    count = client.query("SELECT count() FROM usage_events").result_rows[0][0]
    rolled = client.query("SELECT sum(requests) FROM usage_hourly").result_rows[0][0]

    if args.database_url:
        fresh(both)
        name = "outbox end to end: PostgreSQL ledger → ship_pending_usage → ClickHouse"
        results[name] = []
        for _ in range(args.repeats):
            results[name].append(outbox_end_to_end(args.events, args.batch))
            print(f"  {name}: {results[name][-1]:,.0f} events/s", file=sys.stderr, flush=True)

    print(f"{args.events:,} events per run, median of {args.repeats} runs; chDB folder {folder}\n")
    print("| path | events/s |")
    print("|---|---:|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):,.0f} |")
    print(f"\n(sanity: last fresh table holds {count} rows, rollup {rolled})")


def outbox_end_to_end(n: int, batch: int) -> float:
    """Ledger rows written in bulk (not timed), then shipped by the real shipper (timed)."""
    from django.core.management import call_command
    from django.db import connection

    from metering.models import UsageRecord
    from metering.shipping import ship_pending_usage
    from tenants.models import Organization

    call_command("migrate", verbosity=0)
    org, _ = Organization.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE metering_usagerecord")
    rng = random.Random(3)
    now = datetime.now(timezone.utc)
    UsageRecord.objects.bulk_create([
        UsageRecord(request_id=uuid.uuid4().hex, created_at=now - timedelta(seconds=rng.randint(0, 86400)),
                    organization=org, feature="chat", model_requested="tollgate-mini", model_served="tollgate-mini",
                    input_tokens=100, output_tokens=20, cost_input=Decimal("0.00001"), cost_output=Decimal("0.000008"),
                    cost_total=Decimal("0.000018"), cost_base=Decimal("0.000018"))
        for _ in range(n)
    ], batch_size=5000)
    started = time.perf_counter()
    shipped = ship_pending_usage(batch_size=batch)
    elapsed = time.perf_counter() - started
    assert shipped == n, shipped
    return n / elapsed


if __name__ == "__main__":
    main()
