"""Rate limits: requests and tokens per minute, per API key and per organization, across web processes.

Each limit is a **sliding-window counter** (the weighted sum of this minute's count and the last one's,
the scheme the ``limits`` library calls ``SlidingWindowCounter``): two integers per limit, no list of
timestamps, and at most a few percent off a true moving window at a window's edge.

One request checks every limit that applies to it (key RPM, key TPM, org RPM, org TPM) **all or
nothing** in one step: either each counter takes the request's cost, or none does and the request is
refused with the first limit that would overflow and how long until it would fit.

Stores:

* ``RedisStore`` (``TOLLGATE_RATE_LIMIT_REDIS_URL``, by default ``REDIS_URL``): one Lua script, so the
  check is atomic across web processes and costs one round trip. Why our own script and not the
  ``limits`` library with its Redis storage: ``limits`` checks one limit per call and cannot take four
  at once atomically (test-then-hit on each is racy and doubles the round trips), and the headers need
  each limit's window stats, one more round trip each. ``bench/rate_limit_store.py`` measures both
  against the same Redis (docs/benchmarks.md). The script takes the time from Redis (``TIME``), so web
  processes with skewed clocks still share one window.
* ``MemoryStore`` (no Redis: the embedded default): the same arithmetic in this process under a lock.

From the web server's event loop the check costs no thread: ``MemoryStore`` answers in memory, and
``RedisStore`` runs the same script on redis-py's asyncio client (``aadmit``), one per event loop.

If Redis cannot be reached the request is admitted (fail open), ``tollgate_rate_limit_store_errors_total``
counts it and the log says so at most every ``_LOG_EVERY_S`` (docs/operations.md): a rate limit protects
capacity, and budgets, which do fail closed, still protect money.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass

import redis
import redis.asyncio
from django.conf import settings

from metering.metrics import RATE_LIMIT_STORE_ERRORS
from tenants.services import TenantContext

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000  # "per minute"
REQUESTS, TOKENS = "requests", "tokens"
_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Limit:
    """One limit a request must fit: ``per_minute`` of ``kind`` for one key or one organization."""

    scope: str  # "key" or "org"
    owner_id: int
    kind: str  # REQUESTS or TOKENS
    per_minute: int

    @property
    def store_key(self) -> str:
        return f"tollgate:ratelimit:{self.scope}:{self.owner_id}:{self.kind}"


@dataclass(frozen=True)
class LimitState:
    limit: Limit
    remaining: int  # after this request, when it was admitted
    reset_ms: int  # until the counter is back to zero (the limit "resets to its initial state")


@dataclass(frozen=True)
class Decision:
    admitted: bool
    states: tuple[LimitState, ...] = ()
    refused_by: Limit | None = None
    retry_after_ms: int = 0  # -1: the request alone is larger than the limit; it can never fit
    cost: int = 0  # of the refused limit's kind

    @property
    def retry_after_s(self) -> int:
        """Whole seconds for Retry-After, never 0 for a refusal (the client would retry at once)."""
        if self.retry_after_ms < 0:
            return WINDOW_MS // 1000
        return max(1, math.ceil(self.retry_after_ms / 1000))


def limits_for(tenant: TenantContext) -> tuple[Limit, ...]:
    """The limits that apply to a request from ``tenant`` (blank in admin: none)."""
    candidates = (
        ("key", tenant.api_key_id, REQUESTS, tenant.key_requests_per_minute),
        ("key", tenant.api_key_id, TOKENS, tenant.key_tokens_per_minute),
        ("org", tenant.org_id, REQUESTS, tenant.org_requests_per_minute),
        ("org", tenant.org_id, TOKENS, tenant.org_tokens_per_minute),
    )
    return tuple(Limit(scope, owner, kind, per_minute) for scope, owner, kind, per_minute in candidates
                 if per_minute is not None)


# ----------------------------------------------------------------- the arithmetic (both stores)


def _wait_ms(limit: int, cost: int, current: float, previous: float, elapsed: int, window: int) -> int:
    """How long until ``cost`` more fits: the previous window's share decays linearly over this one."""
    if cost > limit:
        return -1
    if current + cost <= limit:  # only the previous window is in the way
        return max(1, math.ceil(window * (1 - (limit - current - cost) / previous) - elapsed))
    # Not before the next window, where this window's count becomes the decaying one.
    then = window * (1 - (limit - cost) / current) if current else 0
    return max(1, math.ceil(window - elapsed + then))


def _reset_ms(current: float, previous: float, elapsed: int, window: int) -> int:
    if current > 0:
        return 2 * window - elapsed
    if previous > 0:
        return window - elapsed
    return 0


class MemoryStore:
    """The sliding-window counters in this process (one web process: the embedded default)."""

    def __init__(self):
        self._counters: dict[str, list[int]] = {}  # key -> [window index, this window's count, last one's]
        self._lock = threading.Lock()

    def admit(self, limits: tuple[Limit, ...], costs: tuple[int, ...]) -> Decision:
        now = int(time.time() * 1000)
        with self._lock:
            rows, refused = [], None
            for index, (limit, cost) in enumerate(zip(limits, costs)):
                window = now // WINDOW_MS
                w, current, previous = self._counters.get(limit.store_key, (window, 0, 0))
                if w == window - 1:
                    current, previous = 0, current
                elif w < window - 1:
                    current, previous = 0, 0
                elapsed = now - window * WINDOW_MS
                used = previous * (WINDOW_MS - elapsed) / WINDOW_MS + current
                rows.append((window, current, previous, used, elapsed))
                if refused is None and used + cost > limit.per_minute:
                    refused = index
            if refused is None:
                for limit, cost, (window, current, previous, _, _) in zip(limits, costs, rows):
                    self._counters[limit.store_key] = [window, current + cost, previous]
                if len(self._counters) > 100_000:  # bounded: drop counters older than the last window
                    window = now // WINDOW_MS
                    self._counters = {k: v for k, v in self._counters.items() if v[0] >= window - 1}
        return _decision(limits, costs, rows, refused)


def _decision(limits, costs, rows, refused: int | None) -> Decision:
    states = []
    for limit, cost, (_, current, previous, used, elapsed) in zip(limits, costs, rows):
        taken = cost if refused is None else 0
        states.append(LimitState(limit, max(0, math.floor(limit.per_minute - used - taken)),
                                 _reset_ms(current + taken, previous, elapsed, WINDOW_MS)))
    if refused is None:
        return Decision(True, tuple(states))
    _, current, previous, _, elapsed = rows[refused]
    wait = _wait_ms(limits[refused].per_minute, costs[refused], current, previous, elapsed, WINDOW_MS)
    return Decision(False, tuple(states), limits[refused], wait, costs[refused])


# The same arithmetic as MemoryStore.admit, in Redis. KEYS: one hash per limit (w, c, p as above).
# ARGV: the window in ms, then per limit its per-minute limit and this request's cost.
# Returns the refused limit's index (0: admitted), its wait in ms, then per limit: remaining, reset in ms.
_ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local win = math.floor(now / window)
local elapsed = now - win * window
local rows, refused = {}, 0
for i = 1, #KEYS do
  local limit, cost = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local h = redis.call('HMGET', KEYS[i], 'w', 'c', 'p')
  local w, c, p = tonumber(h[1]) or win, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  if w == win - 1 then p = c; c = 0 elseif w < win - 1 then p = 0; c = 0 end
  local used = p * (window - elapsed) / window + c
  rows[i] = {c, p, used, limit, cost}
  if refused == 0 and used + cost > limit then refused = i end
end
local out = {refused, 0}
for i = 1, #KEYS do
  local c, p, used, limit, cost = rows[i][1], rows[i][2], rows[i][3], rows[i][4], rows[i][5]
  local taken = 0
  if refused == 0 then
    taken = cost
    redis.call('HSET', KEYS[i], 'w', win, 'c', c + cost, 'p', p)
    redis.call('PEXPIRE', KEYS[i], 2 * window)
  end
  local reset = 0
  if c + taken > 0 then reset = 2 * window - elapsed elseif p > 0 then reset = window - elapsed end
  out[2 * i + 1] = math.max(0, math.floor(limit - used - taken))
  out[2 * i + 2] = reset
end
if refused > 0 then
  local c, p, limit, cost = rows[refused][1], rows[refused][2], rows[refused][4], rows[refused][5]
  local wait
  if cost > limit then wait = -1
  elseif c + cost <= limit then wait = math.ceil(window * (1 - (limit - c - cost) / p) - elapsed)
  else
    local later = 0
    if c > 0 then later = window * (1 - (limit - cost) / c) end
    wait = math.ceil(window - elapsed + later)
  end
  if wait == 0 then wait = 1 end
  out[2] = wait
end
return out
"""


class StoreDown(Exception):
    """The store failed moments ago; it is not asked again until ``RedisStore.RETRY_AFTER_S`` has passed."""


class RedisStore:
    # After a failure, requests are admitted unchecked for this long without trying Redis: an unreachable
    # store that times out would otherwise add TOLLGATE_RATE_LIMIT_REDIS_TIMEOUT_S to every request.
    RETRY_AFTER_S = 1.0

    def __init__(self, url: str, timeout_s: float):
        self.url, self.timeout_s = url, timeout_s
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._admit = self.client.register_script(_ADMIT_LUA)  # EVALSHA; loads the script once if missing
        # The asyncio client's connections belong to the loop that opened them: one client per loop.
        self._async_admit: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._down_until = 0.0

    def admit(self, limits: tuple[Limit, ...], costs: tuple[int, ...]) -> Decision:
        self._check_not_down()
        try:
            return self._decision(limits, costs, self._admit(keys=_keys(limits), args=_args(limits, costs)))
        except redis.RedisError:
            self._down_until = time.monotonic() + self.RETRY_AFTER_S
            raise

    async def aadmit(self, limits: tuple[Limit, ...], costs: tuple[int, ...]) -> Decision:
        """``admit`` from an event loop, on redis-py's asyncio client: the same script, the same failures."""
        self._check_not_down()
        loop = asyncio.get_running_loop()
        script = self._async_admit.get(loop)
        if script is None:
            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                                  socket_connect_timeout=self.timeout_s)
            script = self._async_admit[loop] = client.register_script(_ADMIT_LUA)
        try:
            return self._decision(limits, costs, await script(keys=_keys(limits), args=_args(limits, costs)))
        except redis.RedisError:
            self._down_until = time.monotonic() + self.RETRY_AFTER_S
            raise

    def _check_not_down(self) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreDown("failed less than a second ago")

    @staticmethod
    def _decision(limits: tuple[Limit, ...], costs: tuple[int, ...], out) -> Decision:
        refused, wait = int(out[0]), int(out[1])
        states = tuple(LimitState(limit, int(out[2 * i + 2]), int(out[2 * i + 3])) for i, limit in enumerate(limits))
        if refused == 0:
            return Decision(True, states)
        return Decision(False, states, limits[refused - 1], wait, costs[refused - 1])


def _keys(limits: tuple[Limit, ...]) -> list[str]:
    return [limit.store_key for limit in limits]


def _args(limits: tuple[Limit, ...], costs: tuple[int, ...]) -> list[int]:
    args = [WINDOW_MS]
    for limit, cost in zip(limits, costs):
        args += [limit.per_minute, cost]
    return args


_stores: dict[str, MemoryStore | RedisStore] = {}
_stores_lock = threading.Lock()
_last_logged = 0.0


def store():
    url = settings.TOLLGATE_RATE_LIMIT_REDIS_URL
    found = _stores.get(url)
    if found is None:
        with _stores_lock:
            found = _stores.get(url)
            if found is None:
                found = _stores[url] = (RedisStore(url, settings.TOLLGATE_RATE_LIMIT_REDIS_TIMEOUT_S) if url
                                        else MemoryStore())
    return found


def _costs(limits: tuple[Limit, ...], tokens: int) -> tuple[int, ...]:
    return tuple(1 if limit.kind == REQUESTS else tokens for limit in limits)


def admit(limits: tuple[Limit, ...], tokens: int) -> Decision:
    """Check and take one request of ``tokens`` against ``limits``; admitted (fail open) if Redis is down."""
    if not limits:
        return Decision(True)
    try:
        return store().admit(limits, _costs(limits, tokens))
    except (redis.RedisError, StoreDown) as exc:
        return _failed_open(exc)


def admits_in_memory() -> bool:
    """Whether ``admit`` needs no I/O here (no Redis configured: this process's counters)."""
    return isinstance(store(), MemoryStore)


async def aadmit(limits: tuple[Limit, ...], tokens: int) -> Decision:
    """``admit`` from an event loop, without a thread: in memory, or on Redis's asyncio client."""
    if not limits:
        return Decision(True)
    found = store()
    try:
        if isinstance(found, MemoryStore):
            return found.admit(limits, _costs(limits, tokens))
        return await found.aadmit(limits, _costs(limits, tokens))
    except (redis.RedisError, StoreDown) as exc:
        return _failed_open(exc)


def _failed_open(exc: BaseException) -> Decision:
    global _last_logged
    RATE_LIMIT_STORE_ERRORS.inc()
    now = time.monotonic()
    if now - _last_logged >= _LOG_EVERY_S:
        _last_logged = now
        logger.warning("rate limits not enforced (fail open): the rate-limit store is unreachable: %s", exc)
    return Decision(True)


# ----------------------------------------------------------------- OpenAI's headers


def format_duration(ms: int) -> str:
    """A duration as OpenAI writes its resets (Go's style): "120ms", "1s", "1.5s", "6m0s", "1h0m0s"."""
    if ms < 1000:
        return f"{max(0, ms)}ms"
    seconds = ms / 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{secs_text}s"
    if minutes:
        return f"{int(minutes)}m{secs_text}s"
    return f"{secs_text}s"


def headers(decision: Decision) -> dict[str, str]:
    """``x-ratelimit-*`` for each kind with a limit: the binding one (least remaining) of the key's and the org's.

    A refused request reports the limit that refused it for its kind. A kind without any limit has no headers.
    """
    out: dict[str, str] = {}
    for kind in (REQUESTS, TOKENS):
        states = [s for s in decision.states if s.limit.kind == kind]
        if not states:
            continue
        binding = min(states, key=lambda s: (s.remaining, s.limit.per_minute))
        if decision.refused_by is not None and decision.refused_by.kind == kind:
            binding = next(s for s in states if s.limit == decision.refused_by)
        out[f"x-ratelimit-limit-{kind}"] = str(binding.limit.per_minute)
        out[f"x-ratelimit-remaining-{kind}"] = str(binding.remaining)
        out[f"x-ratelimit-reset-{kind}"] = format_duration(binding.reset_ms)
    return out
