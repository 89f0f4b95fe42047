"""Which engine serves which model.

For now one engine per process, chosen by TOLLGATE_ENGINE: "cpu" runs the CPU
engine in-process. Pools of remote replicas (vLLM, CPU workers) plug in here.
"""

from __future__ import annotations

import threading

from django.conf import settings

from .base import Engine

_engine: Engine | None = None
_lock = threading.Lock()


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = _build_engine()
    return _engine


def _build_engine() -> Engine:
    kind = settings.TOLLGATE_ENGINE
    if kind == "cpu":
        from .cpu import CpuEngine

        return CpuEngine(
            max_num_seqs=settings.TOLLGATE_CPU_MAX_NUM_SEQS,
            max_num_batched_tokens=settings.TOLLGATE_CPU_MAX_NUM_BATCHED_TOKENS,
        )
    raise ValueError(f"Unknown TOLLGATE_ENGINE {kind!r}; expected 'cpu'")


def engine_for_model(model_name: str) -> Engine | None:
    engine = get_engine()
    return engine if model_name in engine.model_names() else None


def served_model_names() -> set[str]:
    return set(get_engine().model_names())
