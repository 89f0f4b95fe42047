"""Short-lived, in-process memos for the configuration every /v1 request reads.

A gateway request needs its API key, the model's prices, the budgets that
cover it and the org's chargeback mode. These change rarely (an admin edits
them) but are read on every request, so each web process keeps them for
``TOLLGATE_CONFIG_CACHE_TTL_S`` seconds:

- the process that makes a change (admin, service function, signal) drops the
  affected entries at once;
- other processes see the change within the TTL (docs/configuration.md,
  ``TOLLGATE_CONFIG_CACHE_TTL_S``);
- a memo made with ``shared=True`` (API keys: a revocation must hold everywhere at once) is also dropped in
  every other web process within milliseconds: ``invalidate_everywhere`` publishes the invalidation on a
  Redis channel that each process listens to from a background thread (started by the first ``get``).
  While a process is not subscribed (Redis down, reconnecting) the TTL still bounds staleness, and on
  (re)subscribing it drops all its shared memos, since it may have missed messages.

Why not Django's cache framework: its local-memory backend pickles every value
on every ``get`` and takes a lock, and a shared (Redis) cache is a network
round trip; these lookups run several times per request, where a dict of
immutable values costs microseconds. Nothing here is a source of truth:
money (budget counters, the ledger) is always read from the database.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import redis
from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation

logger = logging.getLogger(__name__)

V = TypeVar("V")

_MISSING = object()
_all_memos: "weakref.WeakSet[Memo]" = weakref.WeakSet()


class NotInMemory(Exception):
    """Raised inside ``in_memory_only()`` where a memo would have to load (or a throttled housekeeping step is
    due): the caller does the same work again on a thread, where loading is allowed."""


# What code run under ``in_memory_only()`` may raise when it needed I/O: ``NotInMemory``, or Django refusing a
# query on the event loop (a read that is not behind a memo). Either way nothing was written: do it on a thread.
NEEDS_A_THREAD: tuple[type[Exception], ...] = (NotInMemory, SynchronousOnlyOperation)

_in_memory_only: contextvars.ContextVar[bool] = contextvars.ContextVar("tollgate_in_memory_only", default=False)


def loading(what: str) -> None:
    """Call before reading configuration from the database outside a ``Memo``: raises ``NotInMemory``
    inside ``in_memory_only()``."""
    if _in_memory_only.get():
        raise NotInMemory(what)


class in_memory_only:  # noqa: N801  (used as ``with in_memory_only():``, like a function)
    """Run code that reads memos on the event loop: a memo that holds the value answers as usual, one that
    would load raises ``NotInMemory`` instead of blocking the loop on the database (so does a ``Throttle``
    whose step is due). What ran before the raise must be safe to run again.

    A class rather than a generator context manager: it runs several times per request, and this is a third
    of the cost."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _in_memory_only.set(True)

    def __exit__(self, *exc) -> None:
        _in_memory_only.reset(self._token)


class Memo(Generic[V]):
    """A dict of values with an expiry time, safe to read from many threads.

    A load that raced an invalidation is not stored (generation check), so a
    value read from the database before a change never outlives the change.
    """

    def __init__(self, name: str, max_entries: int = 100_000, *, shared: bool = False):
        self.name = name
        self.max_entries = max_entries
        self.shared = shared
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
        loading(self.name)
        if self.shared and _listener_pid != os.getpid():
            _start_listening()
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

    def peek(self, key: Hashable) -> V | None:
        """The memoized value for ``key`` if this process holds a live one, else None; never loads, so it is
        safe on the event loop (a caller that gets None does the loading ``get`` on a thread)."""
        entry = self._entries.get(key, _MISSING)
        if entry is not _MISSING and entry[0] > time.monotonic():
            return entry[1]
        return None

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
        loading(f"housekeeping {key}")  # the step does I/O: not here, and not counted as done
        self._next[key] = now + interval_s
        return True


# ----------------------------------------------------------------- invalidations across web processes

CHANNEL = "tollgate:memo-invalidations"
_listener_pid: int | None = None  # the process whose listener runs (a forked child starts its own)
_listener_lock = threading.Lock()
_publisher: redis.Redis | None = None
subscribed = threading.Event()  # set while this process's listener is subscribed (tests wait on it)


def invalidate_everywhere(memo: Memo, key: Hashable = _MISSING) -> None:
    """Drop one entry (or all) of ``memo`` here now, and in every web process sharing Redis.

    Keys must be JSON values (strings, numbers). Call it once the change is committed.
    """
    memo.invalidate(key)
    if not settings.REDIS_URL:
        return  # one process: nothing else to tell
    global _publisher
    try:
        if _publisher is None:
            _publisher = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        _publisher.publish(CHANNEL, json.dumps({"memo": memo.name, "key": None if key is _MISSING else key}))
    except redis.RedisError as exc:
        logger.warning("could not tell other web processes to drop memo %r (they will within the TTL): %s",
                       memo.name, exc)


def _start_listening() -> None:
    global _listener_pid
    if not settings.REDIS_URL:
        _listener_pid = os.getpid()  # nothing to listen to
        return
    with _listener_lock:
        if _listener_pid == os.getpid():
            return
        _listener_pid = os.getpid()
        subscribed.clear()
        threading.Thread(target=_listen, args=(settings.REDIS_URL,), name="memo-invalidations", daemon=True).start()


def _drop(name: str, key) -> None:
    for memo in list(_all_memos):
        if memo.shared and (name is None or memo.name == name):
            memo.invalidate() if key is None else memo.invalidate(key)


def _listen(url: str) -> None:
    backoff = 0.5
    while True:
        try:
            client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2, health_check_interval=5)
            pubsub = client.pubsub()
            pubsub.subscribe(CHANNEL)
            deadline = time.monotonic() + 10
            while (message := pubsub.get_message(timeout=1.0)) is None or message["type"] != "subscribe":
                if time.monotonic() > deadline:
                    raise redis.TimeoutError("no subscription confirmation")
            _drop(None, None)  # whatever was published before we listened
            subscribed.set()
            backoff = 0.5
            while True:
                message = pubsub.get_message(timeout=1.0)  # also pings now and then (health_check_interval)
                if message is not None and message["type"] == "message":
                    event = json.loads(message["data"])
                    _drop(event["memo"], event["key"])
        except Exception as exc:  # never let the listener die: staleness would then be unbounded by broadcast
            subscribed.clear()
            logger.warning("memo invalidations: not listening (retrying in %.1fs): %s", backoff, exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
