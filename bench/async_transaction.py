"""Benchmark: one hot-path transaction from the event loop, through psycopg's cursor against core.db's path.

Every request on PostgreSQL runs two of these (the budget hold, the ledger row with the settlement), on the
web server's event loop. Both variants take a connection from the same psycopg pool and send the same
``BEGIN; …; COMMIT`` string bound client-side:

* ``pool.connection()`` and an ``AsyncClientCursor`` (``execute``, then ``fetchall``/``nextset`` per result):
  what ``core.db.arun_transaction`` did before, kept here as the baseline;
* ``core.db.arun_transaction``: ``getconn``/``putconn`` and the query on the connection's libpq handle.

Interleaved rounds on uvloop (the server's loop), one transaction at a time; CPU is this thread's
(``time.thread_time``), wall is the round trip as the request waits for it. The statements are the budget
hold's shape: a numeric, an aware timestamp, an id array and a request id in, one row back.

    .venv/bin/python bench/async_transaction.py --database-url postgres://postgres@127.0.0.1:5432/tollgate_bench_tx
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench_tx")
    ap.add_argument("--transactions", type=int, default=2000, help="per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import psycopg

    base, name = args.database_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:  # (created on the first run)
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import uvloop
    from django.db import connection
    from django.utils import timezone

    from core import db

    with connection.cursor() as cursor:  # (only reaches the database: the statements touch no table)
        cursor.execute("SELECT 1")
    statements = [
        db.Statement("SELECT %s::numeric * 2, %s::timestamptz, cardinality(%s::bigint[]), %s::text",
                     [Decimal("0.000123400000"), timezone.now(), "{1,2,3}", "chatcmpl-bench"]),
    ]

    async def through_cursor(pool, sql, params):
        async with pool.connection() as conn:
            cursor = conn.cursor()
            await cursor.execute(sql, params)
            rows = []
            while True:
                if cursor.description is not None:
                    rows = await cursor.fetchall()
                if not cursor.nextset():
                    return rows

    async def run() -> dict[str, list[tuple[float, float]]]:
        db.use_async_pool_on_this_loop()
        pool = await db._async_pools[asyncio.get_running_loop()].ready()
        sql, params = db._transaction_text(statements, True)
        variants = {
            "pool.connection() + AsyncClientCursor (before)": lambda: through_cursor(pool, sql, params),
            "core.db.arun_transaction": lambda: db.arun_transaction(statements),
        }
        first = [await make() for make in variants.values()]
        assert first[0] == first[1], first  # the same rows, the same types
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, make in variants.items():
                for _ in range(200):
                    await make()
                cpu, wall = time.thread_time(), time.perf_counter()
                for _ in range(args.transactions):
                    await make()
                results[name].append(((time.thread_time() - cpu) / args.transactions * 1e6,
                                      (time.perf_counter() - wall) / args.transactions * 1e6))
        await db.close_async_pool_on_this_loop()
        return results

    results = uvloop.run(run())
    print(f"\n{args.rounds} interleaved rounds of {args.transactions} transactions per variant, "
          f"one at a time, cpus={os.cpu_count()}\n")
    print("| path | CPU µs per transaction (median) | wall µs (median) |")
    print("|---|---:|---:|")
    medians = {}
    for name, rounds in results.items():
        cpu = statistics.median(r[0] for r in rounds)
        wall = statistics.median(r[1] for r in rounds)
        medians[name] = (cpu, wall)
        print(f"| {name} | {cpu:.0f} | {wall:.0f} |")
    (before_cpu, before_wall), (after_cpu, after_wall) = medians.values()
    print(f"\nCPU: {before_cpu / after_cpu:.2f}x less; wall: {before_wall / after_wall:.2f}x less")


if __name__ == "__main__":
    main()
