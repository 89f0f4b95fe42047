"""The local engine (TOLLGATE_ENGINE=cpu: the CPU engine; "none": none).

It serves every model that has no deployment. It runs in this process, or, when
TOLLGATE_CPU_ENGINE_URL names a CPU engine worker (``manage.py serve`` starts one
as its child with TOLLGATE_CPU_ENGINE_PROCESS=separate), it is that
worker reached over HTTP: same models, same parameters, its own interpreter. Which engine serves which model
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


def cpu_worker_url() -> str:
    """The CPU engine worker that stands in for the in-process engine, or "" (the engine runs here)."""
    return settings.TOLLGATE_CPU_ENGINE_URL.rstrip("/") if settings.TOLLGATE_ENGINE == "cpu" else ""


def get_engine() -> Engine:
    engine = in_process_engine()
    if engine is None:
        raise ValueError("TOLLGATE_ENGINE=none: this process runs no engine")
    return engine


def _build_engine() -> Engine | None:
    kind = settings.TOLLGATE_ENGINE
    if kind == "none":
        return None
    if kind == "cpu" and cpu_worker_url():
        return _cpu_worker_engine(cpu_worker_url())
    if kind == "cpu":
        from .cpu.engine import CpuEngine

        return CpuEngine(
            max_num_seqs=settings.TOLLGATE_CPU_MAX_NUM_SEQS,
            max_num_batched_tokens=settings.TOLLGATE_CPU_MAX_NUM_BATCHED_TOKENS,
            enable_prefix_caching=settings.TOLLGATE_CPU_PREFIX_CACHING,
            prefix_cache_blocks=settings.TOLLGATE_CPU_PREFIX_CACHE_BLOCKS,
            threads=settings.TOLLGATE_CPU_ENGINE_THREADS,
        )
    raise ValueError(f"Unknown TOLLGATE_ENGINE {kind!r}; expected 'cpu' or 'none'")


def _cpu_worker_engine(url: str) -> Engine:
    from .cpu.engine import DEFAULT_MODELS, CpuEngine
    from .cpu.model import MODEL_CONFIGS
    from .remote import RemoteEngine

    engine = RemoteEngine(url, list(DEFAULT_MODELS),
                          context_windows={m: c.context_window for m, c in MODEL_CONFIGS.items()},
                          connect_timeout=settings.TOLLGATE_ENGINE_CONNECT_TIMEOUT_S,
                          read_timeout=settings.TOLLGATE_ENGINE_READ_TIMEOUT_S)
    # The worker is the CPU engine: the gateway accepts what that engine accepts, as when it ran here
    # (a vLLM worker takes more, which RemoteEngine's own list says).
    engine.supported_parameters = CpuEngine.supported_parameters
    return engine
