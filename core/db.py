"""One transaction in one round trip, for the gateway's hot path on PostgreSQL.

Django's ``transaction.atomic`` sends BEGIN, each statement and COMMIT as
separate round trips, and on the request path every round trip is latency
the caller waits for. psycopg's client-side binding cursor (Django's default
on PostgreSQL) can send several statements in one query string, so a short
transaction goes out as ``BEGIN; …; COMMIT`` and comes back at once.

Only for a few fixed, parameterized statements on the request path (the
budget hold, the ledger row with its settlement); everything else uses the ORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connection


@dataclass(frozen=True)
class Statement:
    sql: str  # positional %s placeholders only
    params: Sequence


def can_batch() -> bool:
    """True where ``run_transaction`` works: PostgreSQL, autocommit, not inside an atomic block."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def run_transaction(statements: Sequence[Statement], *, synchronous_commit: bool = True) -> list[tuple]:
    """Run ``statements`` as one transaction in one round trip; return the last statement's rows.

    ``synchronous_commit=False`` lets the commit return before its WAL record
    is flushed: only for writes that may be lost in a database crash without
    harm (the transaction stays atomic and isolated either way).
    """
    parts = ["BEGIN"]
    if not synchronous_commit:
        parts.append("SET LOCAL synchronous_commit TO OFF")
    params: list = []
    for statement in statements:
        parts.append(statement.sql)
        params.extend(statement.params)
    parts.append("COMMIT")
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        try:
            cursor.execute(";\n".join(parts), params)
        except Exception:
            # An error stops the server mid-string with the transaction open and failed: end it here,
            # so the connection goes back to the pool clean. If the connection itself is gone, the
            # pool discards it; the original error is the one to report either way.
            try:
                connection.connection.execute("ROLLBACK")
            except Exception:  # noqa: BLE001
                pass
            raise
        while True:  # one result per statement; keep the last that returned rows
            if cursor.description is not None:
                rows = cursor.fetchall()
            if not cursor.nextset():
                break
    return rows
