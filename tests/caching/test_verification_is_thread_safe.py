"""The semantic cache's verification runs on many gateway threads at once and must give each the same verdict
it gives alone (a shared stemmer mixed words up between threads: IndexError, 500s, wrong verdicts)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from caching import verify

PAIRS = [("How do I enable email notifications?", "Can I turn on alerts by email?"),
         ("How do I disable email notifications?", "How do I enable email notifications?"),
         ("What is the refund policy for annual subscriptions?", "Can annual plans be refunded?"),
         ("How many seats does the enterprise plan include?", "How many users can the enterprise plan have?")]


def test_verdicts_on_many_threads_equal_the_verdicts_on_one():
    alone = [verify.words(a) + [verify._stem(w) for w in verify.words(b)] for a, b in PAIRS]

    def stems(i: int):
        a, b = PAIRS[i % len(PAIRS)]
        return i % len(PAIRS), verify.words(a) + [verify._stem(w) for w in verify.words(b)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(stems, range(4000)))
    assert all(result == alone[i] for i, result in results)
