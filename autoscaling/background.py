"""The sampler thread of each web process (started by tollgate/asgi.py): sample, publish, and, without a
broker (the embedded default, no beat), run the recommendation when it is due."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.db import connection

from . import sampling, services

logger = logging.getLogger(__name__)

_thread: threading.Thread | None = None
_lock = threading.Lock()


def tick(sampler: sampling.Sampler) -> None:
    """One round: this process's sample; the recommendation too when no beat runs it and it is due."""
    sampling.sample_and_publish(sampler)
    # cache.add: the first process to claim the interval runs it (locmem: the only process).
    if settings.CELERY_TASK_ALWAYS_EAGER and cache.add("autoscale:tick", 1,
                                                        timeout=settings.TOLLGATE_AUTOSCALE_INTERVAL_S):
        services.recommend_replicas()


def _run(interval_s: float) -> None:
    sampler = sampling.Sampler()
    while True:
        try:
            tick(sampler)
        except Exception:
            logger.exception("autoscaling sample failed")
        finally:
            connection.close()  # a thread outside any request: nothing else closes its connection
        time.sleep(interval_s)


def start_sampler() -> threading.Thread | None:
    """Start this process's sampler thread (once); none when TOLLGATE_AUTOSCALE_SAMPLE_S is 0."""
    global _thread
    interval = settings.TOLLGATE_AUTOSCALE_SAMPLE_S
    if interval <= 0:
        return None
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, args=(interval,), name="tollgate-autoscale-sampler", daemon=True)
            _thread.start()
    return _thread
