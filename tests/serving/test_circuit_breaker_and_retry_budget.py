"""The breaker's and the retry budget's rules, on a clock the test turns (no sleeping)."""

from __future__ import annotations

from serving.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryBudget, backoff_s


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock, **overrides) -> CircuitBreaker:
    return CircuitBreaker(**{"failures": 3, "error_rate": 0.5, "window": 10, "min_calls": 6, "open_s": 5.0,
                             "clock": clock, **overrides})


def test_consecutive_failures_open_the_circuit_and_it_refuses_until_open_s_passed():
    clock = Clock()
    b = breaker(clock)
    for _ in range(2):
        b.record_failure()
    assert b.state == CLOSED and b.begin()
    b.record_failure()
    assert b.state == OPEN and not b.allows() and not b.begin()
    clock.now += 4.9
    assert not b.begin()
    clock.now += 0.2
    assert b.state == HALF_OPEN


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes_the_circuit():
    clock = Clock()
    b = breaker(clock, failures=1)
    b.record_failure()
    clock.now += 5
    assert b.begin()
    assert not b.begin() and not b.allows()  # the probe is in flight
    b.record_success()
    assert b.state == CLOSED and b.begin() and b.begin()


def test_a_failed_probe_opens_the_circuit_again_and_a_probe_without_verdict_frees_the_slot():
    clock = Clock()
    b = breaker(clock, failures=1)
    b.record_failure()
    clock.now += 5
    assert b.begin()
    b.release()  # the client left: no verdict
    assert b.begin()
    b.record_failure()
    assert b.state == OPEN and b.times_opened == 2


def test_an_error_rate_over_the_window_opens_the_circuit_without_consecutive_failures():
    b = breaker(Clock(), failures=100)
    for outcome in [False, True] * 3:  # 3 of 6 failed (True), never two in a row
        b.record_failure() if outcome else b.record_success()
    assert b.state == OPEN


def test_the_retry_budget_allows_its_minimum_plus_a_share_of_requests_over_the_window():
    clock = Clock()
    budget = RetryBudget(ratio=0.2, minimum=1, window_s=10, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]  # 1 + 0.2 x 10
    assert budget.refused == 1
    clock.now += 11  # the window moved on: the old requests and retries no longer count
    assert budget.try_spend() and not budget.try_spend()


def test_backoff_is_full_jitter_below_an_exponential_cap():
    waits = [backoff_s(3, base_s=0.1, cap_s=10) for _ in range(200)]
    assert all(0 <= w <= 0.4 for w in waits) and max(waits) > 0.2 and min(waits) < 0.2
    assert all(backoff_s(30, base_s=0.1, cap_s=1.0) <= 1.0 for _ in range(50))
