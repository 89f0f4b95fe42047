"""core/db.py: a transaction sent as one string is atomic, and a failure leaves the connection usable."""

import pytest
from django.db import connection
from django.db.utils import DatabaseError

from core import db
from core.memo import Memo

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
