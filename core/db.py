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
only for these fixed statements. There the string is bound with psycopg's
adapters and sent on the connection's libpq handle, without a cursor
(``arun_transaction`` says why).
"""

from __future__ import annotations

import asyncio
import functools
import re
import select
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.db import connection
from django.db.utils import DatabaseErrorWrapper
from psycopg import pq
from psycopg.adapt import Transformer
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

    The pool is psycopg's; the query goes out on the connection's libpq handle (``_execute``), not through
    an ``AsyncClientCursor`` and the pool's context manager: every request runs two of these on the event
    loop, and ``bench/async_transaction.py`` measured the cursor's way at 1.3x the CPU and 1.2x the wall time
    of this one (197 against 150 µs, 304 against 251 µs, the same string on the same pool).
    """
    sql, params = _transaction_text(statements, synchronous_commit)
    with DatabaseErrorWrapper(connection):
        pool = await _async_pools[asyncio.get_running_loop()].ready()
        conn = await pool.getconn()
        try:
            return await _execute(conn, sql, params)
        finally:
            await pool.putconn(conn)  # (a connection left closed or mid-query is discarded, not reused)


CANCEL_TIMEOUT_S = 2.0


async def _execute(conn: psycopg.AsyncConnection, sql: str, params: Sequence) -> list[tuple]:
    """Send ``sql`` with ``params`` bound client-side, as one query string; the last result's rows."""
    transformer = Transformer(conn)  # the connection's adapters: Django's, as in its cursors (aware UTC)
    pgconn = conn.pgconn
    query = _bind(transformer, sql, params)
    try:
        pgconn.send_query(query)
        results = await _results(pgconn)
    except BaseException as exc:
        # Cancelled (the client left, a deadline), or the connection broke, while the query was out. The
        # server is told to stop it (as psycopg's cursor does when interrupted): else it runs on, holding
        # its row locks. Closed, the connection cannot go back to the pool in that state (putconn discards it).
        if not isinstance(exc, psycopg.Error) and pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            try:
                await conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
            except (psycopg.Error, OSError):
                pass
        await conn.close()
        raise
    rows: list[tuple] = []
    for result in results:
        if result.status == pq.ExecStatus.TUPLES_OK:
            transformer.set_pgresult(result)
            rows = transformer.load_rows(0, result.ntuples, tuple)
        elif result.status == pq.ExecStatus.FATAL_ERROR:
            error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
            # As run_transaction: an error stops the string with the transaction open and failed; end it
            # before the connection goes back to the pool.
            if not conn.closed:
                try:
                    pgconn.send_query(b"ROLLBACK")
                    await _results(pgconn)
                except psycopg.Error:
                    await conn.close()  # (the pool replaces it; the statement's error is the one to report)
                except BaseException:
                    await conn.close()
                    raise
            raise error
    return rows


async def _results(pgconn: pq.abc.PGconn) -> list:
    """Flush what was sent on the nonblocking ``pgconn`` and wait for all its results (libpq's async
    protocol: flush until done, read until not busy, then take results until there are none)."""
    loop = asyncio.get_running_loop()
    while pgconn.flush():  # 1 while part of the query is still to be sent
        await _ready(loop.add_writer, loop.remove_writer, pgconn.socket)
    results = []
    while True:
        while pgconn.is_busy():
            await _ready(loop.add_reader, loop.remove_reader, pgconn.socket)
            pgconn.consume_input()  # (a connection the server closed raises OperationalError here)
        result = pgconn.get_result()
        if result is None:
            return results
        results.append(result)


async def _ready(add, remove, fileno: int) -> None:
    """Wait until ``fileno`` is ready (``add``/``remove``: the loop's reader or writer registration)."""
    waiter = asyncio.get_running_loop().create_future()
    add(fileno, _wake, waiter)
    try:
        await waiter
    finally:
        remove(fileno)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _bind(transformer: Transformer, sql: str, params: Sequence) -> bytes:
    """``sql`` with its ``%s`` placeholders replaced by ``params`` as SQL literals, quoted by psycopg's
    adapters (what its client-side binding cursor sends); ``%%`` is a literal ``%``."""
    template = _template(sql)
    if len(params) != len(template) - 1:
        raise psycopg.ProgrammingError(
            f"the query has {len(template) - 1} placeholders but {len(params)} parameters were passed")
    parts = [template[0]]
    for value, text in zip(params, template[1:]):
        parts.append(b"NULL" if value is None else transformer.as_literal(value))
        parts.append(text)
    return b"".join(parts)


@functools.lru_cache(maxsize=256)
def _template(sql: str) -> tuple[bytes, ...]:
    """The text between the placeholders of ``sql`` (encoded, ``%%`` unescaped); one more than the
    placeholders. Any other ``%`` is refused, as psycopg refuses it."""
    pieces = _PLACEHOLDER.split(sql)
    texts, current = [], [pieces[0]]
    for marker, text in zip(pieces[1::2], pieces[2::2]):
        if marker == "%%":
            current += ["%", text]
        elif marker == "%s":
            texts.append("".join(current))
            current = [text]
        else:
            raise psycopg.ProgrammingError(f"only '%s' placeholders are allowed, not {marker!r}")
    texts.append("".join(current))
    return tuple(t.encode() for t in texts)


_PLACEHOLDER = re.compile(r"(%%|%s|%.?)", re.DOTALL)
