"""What one chat completion costs the gateway in I/O once its configuration is memoized, counted over real
HTTP with the official client: PostgreSQL round trips, Redis round trips and thread-pool hops (none: the
budget hold and the settlement run from the event loop on psycopg's async pool). The numbers
are the documented ones (docs/architecture.md, "What a request costs the gateway"); a change that adds a
round trip or a hop to every request fails here.

The counts come from wrapping the client libraries' own entry points (psycopg's ``Cursor.execute`` and
``AsyncCursor.execute``; ``core.db._execute``, which sends the event loop's transactions on the
connection's libpq handle; redis-py's ``execute_command`` and pipelines; asgiref's ``SyncToAsync``; Django's
``BaseDatabaseWrapper.__init__``) for the length of a request: nothing is replaced, only counted.
"""

import threading
from collections import Counter
from decimal import Decimal

import psycopg
import pytest
import redis
import redis.asyncio
from asgiref.sync import SyncToAsync
from django.db.backends.base.base import BaseDatabaseWrapper

from budgets.models import Budget
from core import db
from tests.invalidations import drain_invalidations
from metering.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


class IOCounter:
    def __init__(self, monkeypatch):
        self.counts = Counter()
        self.statements: list[str] = []
        self._lock = threading.Lock()
        self.on = False
        counter = self

        def counted(kind, original):
            def wrapper(*args, **kwargs):
                if counter.on:
                    with counter._lock:
                        # An empty query is the pool's health check when a thread takes a Django connection
                        # (CONN_HEALTH_CHECKS, settings.py): counted apart, it comes with each ORM hop.
                        checked = kind == "postgres" and not str(args[1]).strip()
                        counter.counts["postgres health check" if checked else kind] += 1
                        if kind in ("postgres", "redis") and not checked:
                            counter.statements.append(f"{kind}: {str(args[1])[:80]}")
                return original(*args, **kwargs)
            return wrapper

        monkeypatch.setattr(psycopg.Cursor, "execute", counted("postgres", psycopg.Cursor.execute))
        monkeypatch.setattr(psycopg.AsyncCursor, "execute", counted("postgres", psycopg.AsyncCursor.execute))
        # The event loop's transactions go out on the connection's libpq handle, not a cursor: one query
        # string each, sent by core.db._execute (counted, not replaced: the wrapper calls it).
        monkeypatch.setattr(db, "_execute", counted("postgres", db._execute))
        monkeypatch.setattr(redis.Redis, "execute_command", counted("redis", redis.Redis.execute_command))
        monkeypatch.setattr(redis.asyncio.Redis, "execute_command",
                            counted("redis", redis.asyncio.Redis.execute_command))
        monkeypatch.setattr(redis.client.Pipeline, "execute", counted("redis", redis.client.Pipeline.execute))
        # Touching django.db.connection in a request's own context on the event loop builds a new
        # DatabaseWrapper there (Django's connections are per context): none should be built per request.
        original_init = BaseDatabaseWrapper.__init__

        def built(self_, *args, **kwargs):
            if counter.on:
                with counter._lock:
                    counter.counts["database wrappers built"] += 1
            return original_init(self_, *args, **kwargs)

        monkeypatch.setattr(BaseDatabaseWrapper, "__init__", built)
        original_call = SyncToAsync.__call__

        def hop(self_, *args, **kwargs):
            if counter.on:
                with counter._lock:
                    counter.counts["hops"] += 1
            return original_call(self_, *args, **kwargs)

        monkeypatch.setattr(SyncToAsync, "__call__", hop)

    def measure(self, fn):
        self.counts.clear()
        self.statements.clear()
        self.on = True
        try:
            fn()
        finally:
            self.on = False
        return dict(self.counts)


def _warm_up(client, **extra):
    """Memoize the key, prices, budgets and policies (the listener drops shared memos when it subscribes)."""
    _ask(client, **extra)
    drain_invalidations()
    _ask(client, **extra)


def _ask(client, **extra):
    return client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, **extra)


@pytest.fixture
def io(monkeypatch, settings):
    settings.TOLLGATE_CONFIG_CACHE_TTL_S = 600  # memos that outlive a slow machine's warm-up
    return IOCounter(monkeypatch)


def test_a_request_under_a_budget_is_two_database_round_trips_and_no_hop(openai_client, tenant, io):
    Budget.objects.create(organization=tenant.org, amount=Decimal("50"), action=Budget.Action.BLOCK)
    _warm_up(openai_client)
    for _ in range(3):
        counts = io.measure(lambda: _ask(openai_client))
        # The budget hold, then the ledger row with the settlement: each one transaction in one round trip.
        assert counts.get("postgres", 0) == 2, io.statements
        assert counts.get("redis", 0) == 0, io.statements
        # Routing in memory, the hold and the settlement from the event loop: the thread pool is not used,
        # and the async pool checks its connections without a round trip (core/db.py).
        assert counts.get("hops", 0) == 0, io.statements
        assert counts.get("postgres health check", 0) == 0, io.statements
        assert counts.get("database wrappers built", 0) == 0, counts
    assert UsageRecord.objects.filter(organization=tenant.org).count() == 5


def test_without_the_async_pool_the_hold_and_settlement_take_one_hop_each(openai_client, tenant, io, settings):
    settings.TOLLGATE_ASYNC_DATABASE = False
    Budget.objects.create(organization=tenant.org, amount=Decimal("50"), action=Budget.Action.BLOCK)
    _warm_up(openai_client)
    counts = io.measure(lambda: _ask(openai_client))
    assert counts.get("postgres", 0) == 2, io.statements
    assert counts.get("hops", 0) == 2, io.statements
    assert counts.get("postgres health check", 0) == 2, io.statements  # one per Django connection taken
    assert UsageRecord.objects.filter(organization=tenant.org).count() == 3


def test_a_budget_past_its_downgrade_threshold_decides_on_a_thread_and_still_settles(openai_client, tenant, io):
    # The one-statement hold cannot decide a downgrade: it gives its hold back, and the locked path decides.
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("50"), action=Budget.Action.DOWNGRADE,
                                   downgrade_at_percent=0)
    _warm_up(openai_client)
    counts = io.measure(lambda: _ask(openai_client))
    assert counts.get("hops", 0) == 1, io.statements  # the locked path, on a thread
    assert UsageRecord.objects.filter(organization=tenant.org).count() == 3
    counter = budget.counters.get()
    assert counter.reserved == 0 and counter.spent == sum(
        r.cost_total for r in UsageRecord.objects.filter(organization=tenant.org))


def test_a_rate_limited_key_adds_one_redis_round_trip_and_no_hop(openai_client, tenant, io):
    tenant.key.requests_per_minute = 1000
    tenant.key.save()
    Budget.objects.create(organization=tenant.org, amount=Decimal("50"), action=Budget.Action.BLOCK)
    _warm_up(openai_client)
    counts = io.measure(lambda: _ask(openai_client))
    assert counts.get("redis", 0) == 1, io.statements  # the admission script: every limit checked and counted at once
    assert counts.get("postgres", 0) == 2, io.statements
    assert counts.get("hops", 0) == 0, io.statements  # the admission on Redis's asyncio client


def test_a_deterministic_request_looks_in_the_cache_on_the_same_hop(openai_client, tenant, io, settings):
    settings.TOLLGATE_CACHE = True
    settings.TOLLGATE_SEMANTIC_CACHE = False
    _warm_up(openai_client, temperature=0)
    counts = io.measure(lambda: _ask(openai_client, temperature=0))  # a hit now
    assert counts.get("hops", 0) == 1, io.statements  # the cache lookup (routing in memory, settlement on the loop)
    # The lookup (one read of the entry, one of its purge generations) and the check that the key which
    # wrote the entry is still active, then the settlement.
    assert counts.get("redis", 0) == 2, io.statements
    assert counts.get("postgres", 0) == 2, io.statements
    assert counts.get("postgres health check", 0) == 1, io.statements  # the lookup's Django connection
