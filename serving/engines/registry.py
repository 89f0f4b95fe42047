"""The engine that runs in this process (TOLLGATE_ENGINE=cpu: the CPU engine; "none": none).

It serves every model that has no deployment. Which engine serves which model
(deployments, pools and replicas) is ``serving.pools``'s business, which uses
this one as its in-process replica.
"""

from __future__ import annotations

import threading

from django.conf import settings

from .base import Engine

_engine: Engine | None = None
_built = False
_lock = threading.Lock()


def in_process_engine() -> Engine | None:
    """The engine running in this process, or None when TOLLGATE_ENGINE=none."""
    global _engine, _built
    if not _built:
        with _lock:
            if not _built:
                _engine = _build_engine()
                _built = True
    return _engine


def get_engine() -> Engine:
    engine = in_process_engine()
    if engine is None:
        raise ValueError("TOLLGATE_ENGINE=none: this process runs no engine")
    return engine


def _build_engine() -> Engine | None:
    kind = settings.TOLLGATE_ENGINE
    if kind == "none":
        return None
    if kind == "cpu":
        from .cpu import CpuEngine

        return CpuEngine(
            max_num_seqs=settings.TOLLGATE_CPU_MAX_NUM_SEQS,
            max_num_batched_tokens=settings.TOLLGATE_CPU_MAX_NUM_BATCHED_TOKENS,
            enable_prefix_caching=settings.TOLLGATE_CPU_PREFIX_CACHING,
            prefix_cache_blocks=settings.TOLLGATE_CPU_PREFIX_CACHE_BLOCKS,
            threads=settings.TOLLGATE_CPU_ENGINE_THREADS,
        )
    raise ValueError(f"Unknown TOLLGATE_ENGINE {kind!r}; expected 'cpu' or 'none'")
