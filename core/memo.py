"""Short-lived, in-process memos for the configuration every /v1 request reads.

A gateway request needs its API key, the model's prices, the budgets that
cover it and the org's chargeback mode. These change rarely (an admin edits
them) but are read on every request, so each web process keeps them for
``TOLLGATE_CONFIG_CACHE_TTL_S`` seconds:

- the process that makes a change (admin, service function, signal) drops the
  affected entries at once;
- other processes see the change within the TTL (docs/configuration.md,
  ``TOLLGATE_CONFIG_CACHE_TTL_S``).

Why not Django's cache framework: its local-memory backend pickles every value
on every ``get`` and takes a lock, and a shared (Redis) cache is a network
round trip; these lookups run several times per request, where a dict of
immutable values costs microseconds. Nothing here is a source of truth:
money (budget counters, the ledger) is always read from the database.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from django.conf import settings

V = TypeVar("V")

_MISSING = object()
_all_memos: "weakref.WeakSet[Memo]" = weakref.WeakSet()


class Memo(Generic[V]):
    """A dict of values with an expiry time, safe to read from many threads.

    A load that raced an invalidation is not stored (generation check), so a
    value read from the database before a change never outlives the change.
    """

    def __init__(self, name: str, max_entries: int = 100_000):
        self.name = name
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, V]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        _all_memos.add(self)

    def get(self, key: Hashable, load: Callable[[], V], *, ttl_s: float | None = None,
            store: Callable[[V], bool] | None = None) -> V:
        """The memoized value for ``key``, calling ``load()`` when it is missing or expired.

        ``store(value)`` may refuse to memoize a value (e.g. "no such key", so
        random garbage keys cannot fill the memo).
        """
        now = time.monotonic()
        entry = self._entries.get(key, _MISSING)
        if entry is not _MISSING and entry[0] > now:
            return entry[1]
        generation = self._generation
        value = load()
        ttl = settings.TOLLGATE_CONFIG_CACHE_TTL_S if ttl_s is None else ttl_s
        if ttl > 0 and (store is None or store(value)):
            with self._lock:
                if generation == self._generation:
                    if len(self._entries) >= self.max_entries:
                        self._entries.clear()  # crude but bounded; entries are cheap to reload
                    self._entries[key] = (now + ttl, value)
        return value

    def invalidate(self, key: Hashable = _MISSING) -> None:
        """Drop one entry, or all of them."""
        with self._lock:
            self._generation += 1
            if key is _MISSING:
                self._entries.clear()
            else:
                self._entries.pop(key, None)


def clear_all_memos() -> None:
    """Forget every memoized value in this process (tests, after bulk changes that send no signals)."""
    for memo in list(_all_memos):
        memo.invalidate()


class Throttle:
    """"At most once per interval, per key, in this process": the cheap first gate in front of a
    cross-process ``cache.add`` (which is a Redis round trip), for housekeeping done from the request path.
    """

    def __init__(self):
        self._next: dict[Hashable, float] = {}

    def pending(self, key: Hashable) -> bool:
        """Whether ``due(key, ...)`` would answer True now (without starting a new interval)."""
        return self._next.get(key, 0.0) <= time.monotonic()

    def due(self, key: Hashable, interval_s: float) -> bool:
        now = time.monotonic()
        if self._next.get(key, 0.0) > now:
            return False
        self._next[key] = now + interval_s
        return True
