"""What keeps a failure from costing more than it must: circuit breakers, retry budgets and backoff.

* ``CircuitBreaker`` (one per replica): closed while the replica answers;
  open after ``failures`` consecutive failures, or when at least
  ``error_rate`` of its last ``window`` calls failed (once ``min_calls`` are
  in); while open no request is sent to it; after ``open_s`` it is half-open
  and lets one probe request through: success closes it, failure opens it
  again.
* ``RetryBudget`` (one per pool): retries may be at most ``ratio`` of the
  pool's requests over a sliding window (plus ``minimum`` per window, so a
  quiet pool can still retry once in a while). When a pool's replicas fail
  together, a budget turns the retry storm into a fast error.
* ``backoff_s``: exponential backoff with full jitter (a uniform wait between
  0 and ``base * 2**n``, capped), so retries of requests that failed together
  do not arrive together.

Why not a library: the breakers and budgets here guard streams, not calls.
A request's outcome is known only when its stream ends (or is cancelled,
which is no verdict), and its half-open probe is claimed when a replica is
chosen, not when a function is called; pybreaker's and tenacity's call
wrappers do not fit that shape, and each piece is a few lines. The state is
per web process, like the pools' admission queues.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter, Gauge

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
# Prometheus gauge values for each state.
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

# On /metrics (the default registry, or every process's files in multiprocess mode). A replica's state
# across web processes is the worst one ("max"): one process with an open circuit is worth seeing.
BREAKER_STATE = Gauge("tollgate_replica_circuit_state",
                      "Circuit breaker state per replica: 0 closed, 1 half-open (probing), 2 open.",
                      ["pool", "replica"], multiprocess_mode="max")
BREAKER_OPENED = Counter("tollgate_replica_circuit_opened", "Times a replica's circuit opened.",
                         ["pool", "replica"])
RETRIES = Counter("tollgate_retries", "Failed tries of a request that were retried, or not for want of budget.",
                  ["pool", "outcome"])


class CircuitBreaker:
    def __init__(self, *, failures: int, error_rate: float, window: int, min_calls: int, open_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = max(1, failures)
        self.error_rate = error_rate
        self.min_calls = max(1, min_calls)
        self.open_s = open_s
        self._clock = clock
        self._outcomes: deque[bool] = deque(maxlen=max(1, window))  # True = failure
        self._consecutive = 0
        self._state = CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._lock = threading.Lock()
        self.times_opened = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._current_state()

    def _current_state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.open_s:
            self._state = HALF_OPEN
            self._probe_in_flight = False
        return self._state

    def seconds_until_probe(self) -> float:
        """How long until an open circuit lets its probe through (0 when it would now)."""
        with self._lock:
            if self._current_state() != OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.open_s - self._clock())

    def allows(self) -> bool:
        """Whether a request may be sent now (does not claim the half-open probe; ``begin`` does)."""
        with self._lock:
            state = self._current_state()
            return state == CLOSED or (state == HALF_OPEN and not self._probe_in_flight)

    def begin(self) -> bool:
        """Claim the right to send one request; False when the breaker is open or its probe is taken."""
        with self._lock:
            state = self._current_state()
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._consecutive = 0
            self._outcomes.append(False)
            if self._current_state() == HALF_OPEN:
                self._state = CLOSED
                self._outcomes.clear()
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            self._outcomes.append(True)
            state = self._current_state()
            failed = sum(self._outcomes)
            if state == HALF_OPEN or self._consecutive >= self.failure_threshold or (
                    len(self._outcomes) >= self.min_calls and failed >= self.error_rate * len(self._outcomes)):
                if state != OPEN:
                    self.times_opened += 1
                self._state = OPEN
                self._opened_at = self._clock()
            self._probe_in_flight = False

    def release(self) -> None:
        """The request ended without a verdict (its client left): free the probe, judge nothing."""
        with self._lock:
            self._probe_in_flight = False


class RetryBudget:
    """Retries allowed at most ``ratio`` x requests (+ ``minimum``) over the last ``window_s`` seconds."""

    BUCKETS = 10

    def __init__(self, *, ratio: float, minimum: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.ratio = ratio
        self.minimum = minimum
        self.bucket_s = max(window_s, 0.001) / self.BUCKETS
        self._clock = clock
        self._buckets: deque[list] = deque()  # [bucket start, requests, retries]
        self._lock = threading.Lock()
        self.refused = 0

    def _current(self) -> list:
        now = self._clock()
        start = now - now % self.bucket_s
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0, 0])
        horizon = start - self.bucket_s * (self.BUCKETS - 1)
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()
        return self._buckets[-1]

    def record_request(self) -> None:
        with self._lock:
            self._current()[1] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and counted) when it is spent."""
        with self._lock:
            bucket = self._current()
            requests = sum(b[1] for b in self._buckets)
            retries = sum(b[2] for b in self._buckets)
            if retries + 1 > self.minimum + self.ratio * requests:
                self.refused += 1
                return False
            bucket[2] += 1
            return True


def backoff_s(retry: int, *, base_s: float, cap_s: float) -> float:
    """Full-jitter exponential backoff before retry number ``retry`` (1 for the first retry)."""
    return random.uniform(0.0, min(cap_s, base_s * 2 ** (retry - 1)))
