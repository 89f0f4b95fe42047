"""core/db.py: a transaction sent as one string is atomic, and a failure leaves the connection usable."""

import asyncio
import time
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.db import connection
from django.db.utils import DatabaseError, ProgrammingError

from core import db
from core.memo import Memo, NotInMemory, Throttle, in_memory_only

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scratch_table():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE scratch (id int PRIMARY KEY, note text)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE scratch")


def count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM scratch")
        return cursor.fetchone()[0]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_the_last_statement_returns_its_rows(scratch_table):
    rows = db.run_transaction([
        db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, "a"]),
        db.Statement("INSERT INTO scratch VALUES (%s, %s) RETURNING id, note", [2, "b"]),
    ], synchronous_commit=False)
    assert rows == [(2, "b")]
    assert count() == 2


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_failing_statement_rolls_back_the_whole_transaction(scratch_table):
    with pytest.raises(DatabaseError):
        db.run_transaction([
            db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, "a"]),
            db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, "duplicate key"]),
        ])
    assert count() == 0  # the first insert went too
    # ...and the connection is out of the failed transaction, ready for the next one.
    db.run_transaction([db.Statement("INSERT INTO scratch VALUES (%s, %s)", [3, "c"])])
    assert count() == 1


def test_a_memo_never_keeps_a_value_loaded_across_an_invalidation():
    memo = Memo("test")
    loads = []

    def load_then_change_happens():
        loads.append(1)
        memo.invalidate("k")  # the value read is already stale when it comes back
        return "old"

    assert memo.get("k", load_then_change_happens) == "old"
    assert memo.get("k", lambda: "new") == "new"
    assert memo.get("k", lambda: "newer") == "new"  # memoized now


# ----------------------------------------------------------------- from the event loop (psycopg's async pool)


def _on_an_opted_in_loop(body):
    """Run ``body()`` (a coroutine function) on a fresh loop that opted in to the async pool, then close it."""
    async def run():
        db.use_async_pool_on_this_loop()
        try:
            return await body()
        finally:
            await db.close_async_pool_on_this_loop()

    return asyncio.run(run())


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_from_the_event_loop_the_same_transaction_returns_the_same_rows(scratch_table):
    async def body():
        assert db.async_ready()
        return await db.arun_transaction([
            db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, "a"]),
            db.Statement("INSERT INTO scratch VALUES (%s, %s) RETURNING id, note", [2, "b"]),
        ], synchronous_commit=False)

    assert _on_an_opted_in_loop(body) == [(2, "b")]
    assert count() == 2


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_from_the_event_loop_a_failure_is_djangos_error_rolls_back_and_leaves_the_pool_usable(scratch_table):
    async def body():
        with pytest.raises(DatabaseError):  # Django's, so the edge answers 503 as for the ORM
            await db.arun_transaction([
                db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, "a"]),
                db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, "duplicate key"]),
            ])
        for n in range(3):  # more than the pool's connections at first: each came back clean
            await db.arun_transaction([db.Statement("INSERT INTO scratch VALUES (%s, %s)", [10 + n, "ok"])])

    _on_an_opted_in_loop(body)
    assert count() == 3


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_from_the_event_loop_values_of_every_kind_are_bound_as_literals_and_read_back_typed(scratch_table):
    at = datetime(2026, 12, 2, 18, 30, 1, 123456, tzinfo=dt_timezone.utc)
    tricky = "it's 100% \\ a 'quote' %s and\nnewline \u00e9 \U0001f600"

    async def body():
        return await db.arun_transaction([
            db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, tricky]),
            db.Statement("SELECT note, %s::numeric, %s::timestamptz, %s::bigint[], %s::text IS NULL, "
                         "'50%%' FROM scratch WHERE id = %s", [Decimal("0.000123400000"), at, [3, 1, 2], None, 1]),
        ])

    assert _on_an_opted_in_loop(body) == [(tricky, Decimal("0.000123400000"), at, [3, 1, 2], True, "50%")]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_from_the_event_loop_a_placeholder_without_its_parameter_is_refused_before_anything_is_sent():
    async def body():
        for statement in (db.Statement("SELECT %s, %s", [1]), db.Statement("SELECT %d", [1])):
            with pytest.raises(ProgrammingError):
                await db.arun_transaction([statement])
        return await db.arun_transaction([db.Statement("SELECT %s", [7])])

    assert _on_an_opted_in_loop(body) == [(7,)]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_from_the_event_loop_a_transaction_cancelled_mid_query_does_not_come_back_to_the_pool_busy(scratch_table):
    """A request cancelled while its statement runs (its client left, a deadline): the server is told to
    stop the statement (else it runs on, holding its locks), and the connection is closed, not handed to the
    next request with the old query still running on it."""
    async def body():
        slow = asyncio.ensure_future(db.arun_transaction([
            db.Statement("INSERT INTO scratch VALUES (%s, %s)", [1, "never"]),
            db.Statement("SELECT pg_sleep(%s)", [30]),
        ]))
        await asyncio.sleep(0.3)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        started = time.monotonic()
        for n in range(12):  # more than the pool keeps open: none of them is the cancelled one, still busy
            assert await db.arun_transaction([db.Statement("SELECT %s", [n])]) == [(n,)]
        return time.monotonic() - started

    assert _on_an_opted_in_loop(body) < 10  # (not waiting on the 30 s sleep)
    deadline = time.monotonic() + 5
    while _sleeping() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sleeping() == 0  # the server stopped it
    assert count() == 0  # the cancelled transaction never committed


def _sleeping() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
                       ["%pg_sleep(30)%"])
        return cursor.fetchone()[0]


def test_a_loop_that_did_not_opt_in_is_not_ready():
    async def body():
        return db.async_ready()

    assert db.async_ready() is False  # no loop at all
    assert asyncio.run(body()) is False  # a task's or command's own loop never opens a pool


def test_in_memory_only_a_memo_that_would_load_raises_instead():
    memo = Memo("test in memory")
    loads = []
    with in_memory_only():
        with pytest.raises(NotInMemory):
            memo.get("k", lambda: loads.append(1) or "v")
    assert loads == []  # nothing was read
    assert memo.get("k", lambda: "v") == "v"
    with in_memory_only():
        assert memo.get("k", lambda: "other") == "v"  # held: answered as usual


def test_in_memory_only_a_due_housekeeping_step_raises_and_stays_due():
    throttle = Throttle()
    with in_memory_only():
        with pytest.raises(NotInMemory):
            throttle.due("sweep", 60)
    assert throttle.due("sweep", 60) is True  # not counted as done while it could not run
    with in_memory_only():
        assert throttle.due("sweep", 60) is False  # not due: no I/O asked for
