"""Which engine serves which model.

The in-process engine (TOLLGATE_ENGINE=cpu: the CPU engine in this process;
"none": no in-process engine) serves every model that has no deployment.
Deployments configured in the database (serving.models: pools, deployments,
replicas) put models on remote workers (vLLM or CPU workers) or on the
in-process engine, behind the pool's admission queue; ``serving.pools`` runs
them. Either way the gateway gets an ``Engine``.
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
        )
    raise ValueError(f"Unknown TOLLGATE_ENGINE {kind!r}; expected 'cpu' or 'none'")


def engine_for_model(model_name: str) -> Engine | None:
    """The model's deployment (its pool and replicas) as one generating Engine, or None if nothing serves it."""
    from ..pools import deployment_for_model

    deployment = deployment_for_model(model_name)
    if deployment is None or deployment.pool.config.kind == "embedding":
        return None  # embedding models are served by /v1/embeddings only
    return deployment


def served_model_names() -> set[str]:
    from ..pools import pool_topology

    return set(pool_topology().deployments)
