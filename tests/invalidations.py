"""Waiting out memo invalidations in flight (core/memo.py), for tests that count what a memoized request does.

Saving a key, a budget or a policy publishes an invalidation on Redis; this process's listener drops the
memo entry when the message arrives, and drops every shared memo when it (re)subscribes. A test that
memoizes and then measures must not have either land in between.
"""

import time

from core import memo


def drain_invalidations(timeout_s: float = 10) -> None:
    """Return once this process's listener is subscribed and has handled every invalidation published so
    far. Redis delivers one publisher's messages in order, so once a probe published after them has been
    handled, they have been too."""
    assert memo.subscribed.wait(timeout_s), "the memo invalidation listener is not subscribed"
    probe = memo.Memo("test invalidation probe", shared=True)
    before = probe._generation
    memo.invalidate_everywhere(probe, "probe")  # drops it here at once (a generation), then publishes
    deadline = time.monotonic() + timeout_s
    while probe._generation < before + 2:  # the listener's drop is the second
        assert time.monotonic() < deadline, "the memo invalidation listener never caught up"
        time.sleep(0.01)
