"""One transaction in one round trip, for the gateway's hot path on PostgreSQL.

Django's ``transaction.atomic`` sends BEGIN, each statement and COMMIT as
separate round trips, and on the request path every round trip is latency
the caller waits for. psycopg's client-side binding cursor (Django's default
on PostgreSQL) can send several statements in one query string, so a short
transaction goes out as ``BEGIN; …; COMMIT`` and comes back at once.

Only for a few fixed, parameterized statements on the request path (the
budget hold, the ledger row with its settlement); everything else uses the ORM.

The same transactions can also run from the event loop itself
(``arun_transaction``), on psycopg's async connection pool: the web edge
opts its loop in (``use_async_pool_on_this_loop``), and a request then holds
and settles its budget without crossing to the thread pool at all. Django's
ORM has no async database access yet (its async methods hop to a thread), so
this pool is psycopg's own, made from Django's connection settings; it is
only for these fixed statements.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.db import connection
from django.db.utils import DatabaseErrorWrapper
from psycopg_pool import AsyncConnectionPool


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
    sql, params = _transaction_text(statements, synchronous_commit)
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        try:
            cursor.execute(sql, params)
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


def _transaction_text(statements: Sequence[Statement], synchronous_commit: bool) -> tuple[str, list]:
    parts = ["BEGIN"]
    if not synchronous_commit:
        parts.append("SET LOCAL synchronous_commit TO OFF")
    params: list = []
    for statement in statements:
        parts.append(statement.sql)
        params.extend(statement.params)
    parts.append("COMMIT")
    return ";\n".join(parts), params


# ----------------------------------------------------------------- from the event loop

# One pool per event loop that opted in (a pool's connections and tasks belong to the loop that opened it):
# the web server's loop, and in tests each in-process server's.
_async_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncPool]" = weakref.WeakKeyDictionary()


class _AsyncPool:
    def __init__(self):
        params = connection.get_connection_params()  # Django's own: database, user, its adapters (aware UTC)
        pool_options = dict(settings.DATABASES["default"].get("OPTIONS", {}).get("pool") or {})
        # Client-side binding, as Django's cursors: a transaction's statements go out in one query string.
        params.update(cursor_factory=psycopg.AsyncClientCursor, autocommit=True)
        # Django's pool's maximum and wait (DATABASE_POOL_*: settings.py); at least half the maximum kept open,
        # since every request takes a connection twice and the pool adds connections one at a time while
        # requests queue: at 64 clients that queueing cost 0.4–1.2 ms of CPU per request (docs/benchmarks.md).
        max_size = int(pool_options.get("max_size", 20))
        self.pool = AsyncConnectionPool(
            kwargs=params, min_size=max(int(pool_options.get("min_size", 2)), max_size // 2),
            max_size=max_size, timeout=float(pool_options.get("timeout", 10)),
            configure=_utc_session, check=_still_open, open=False, name="tollgate-async",
        )
        self.opened: asyncio.Task | None = None

    async def ready(self):
        if self.opened is None:
            self.opened = asyncio.ensure_future(self.pool.open(wait=False))
        await self.opened
        return self.pool


async def _utc_session(conn) -> None:
    # Django's connections run in UTC (USE_TZ); the rows these statements return hold aware datetimes.
    if conn.info.parameter_status("TimeZone") not in ("UTC", "Etc/UTC"):
        await conn.execute("SET TIME ZONE 'UTC'")


async def _still_open(conn) -> None:
    """The pool's check when it hands out a connection, without a round trip: a connection that the server
    (or a proxy between) closed while it sat idle has a readable socket; reading it raises, and the pool
    discards that connection and hands out another. Without this, after a database outage every idle
    connection failed one request each with a 503 before the pool noticed."""
    pgconn = conn.pgconn
    if select.select([pgconn.socket], [], [], 0)[0]:
        pgconn.consume_input()  # EOF: OperationalError; a notice or a parameter change is simply read
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the connection was closed while idle")


def use_async_pool_on_this_loop() -> None:
    """Let ``arun_transaction`` run on the running event loop (PostgreSQL, ``TOLLGATE_ASYNC_DATABASE``).
    Cheap after the first call on a loop: the web edge calls it per request."""
    loop = asyncio.get_running_loop()
    if loop not in _async_pools and connection.vendor == "postgresql" and settings.TOLLGATE_ASYNC_DATABASE:
        _async_pools[loop] = _AsyncPool()


async def close_async_pool_on_this_loop() -> None:
    """Close the running loop's pool, if it has one (a server shutting down, a test)."""
    found = _async_pools.pop(asyncio.get_running_loop(), None)
    if found is not None and found.opened is not None:
        await found.pool.close()


def async_ready() -> bool:
    """Whether ``arun_transaction`` can run here: an event loop that opted in. Elsewhere (a task's
    ``async_to_sync`` loop, SQLite) callers use ``run_transaction`` on a thread, as before."""
    try:
        return asyncio.get_running_loop() in _async_pools and settings.TOLLGATE_ASYNC_DATABASE
    except RuntimeError:
        return False


async def arun_transaction(statements: Sequence[Statement], *, synchronous_commit: bool = True) -> list[tuple]:
    """``run_transaction`` from the event loop, on this loop's async pool (``async_ready()`` must be True).

    psycopg's errors come out as Django's (``django.db.DatabaseError`` and kin), as from the ORM, so the
    edge answers a database that is down with the same 503.
    """
    sql, params = _transaction_text(statements, synchronous_commit)
    rows: list[tuple] = []
    with DatabaseErrorWrapper(connection):
        pool = await _async_pools[asyncio.get_running_loop()].ready()
        async with pool.connection() as conn:
            cursor = conn.cursor()
            try:
                await cursor.execute(sql, params)
            except psycopg.Error:
                # As run_transaction: end the failed transaction before the connection goes back to the pool.
                if not conn.closed:
                    try:
                        await conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                raise
            while True:
                if cursor.description is not None:
                    rows = await cursor.fetchall()
                if not cursor.nextset():
                    break
    return rows
