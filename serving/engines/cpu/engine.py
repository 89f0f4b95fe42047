"""In-process CPU engine with iteration-level (continuous) batching.

One daemon scheduler thread per engine owns every model and its KV cache.
Each iteration, for each model with work, it

1. drops running sequences whose stream was cancelled or closed,
2. admits waiting requests (up to ``max_num_seqs`` running and
   ``max_num_batched_tokens`` padded prompt tokens) and prefills them in one
   batched forward pass, which also samples their first token,
3. runs ONE batched decode step for every running sequence of the model,
   emitting one token per sequence.

A request submitted while others are decoding is therefore prefilled at the
next iteration and decodes in the same batch from then on.

Tokens reach the caller's event loop through ``loop.call_soon_threadsafe``.
Every forward pass ("step") is timed; its wall time is split among the
sequences in it in proportion to the tokens each processed (prompt tokens in
a prefill step, one token each in a decode step), so the ``engine_seconds`` of
all requests add up to ``busy_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from serving.engines.base import (
    ChatMessage,
    Engine,
    EngineError,
    EngineRejected,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    PromptTooLong,
    TextDelta,
    TokenLogprob,
)
from serving.engines.cpu.model import MODEL_CONFIGS, LlamaModel, ModelConfig
from serving.engines.cpu.structured import GrammarConstraint, GrammarVocabulary, StructuredOutputError
from serving.engines.cpu.tokenizer import SEP_ID, get_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("tollgate-mini", "tollgate-small", "tollgate-large")


@dataclass(frozen=True)
class StepRecord:
    """One forward pass of the scheduler."""

    index: int
    model: str
    kind: str  # "prefill" or "decode"
    request_ids: tuple[str, ...]
    tokens: tuple[int, ...]  # tokens each request processed in this step
    seconds: float


_DONE = object()


class _Sequence:
    """Scheduler-side state of one request."""

    __slots__ = (
        "request",
        "request_id",
        "stream",
        "prompt_ids",
        "prompt_len",
        "max_tokens",
        "temperature",
        "greedy",
        "top_p",
        "seed",
        "rng",
        "stops",
        "decoder",
        "n_out",
        "last_token",
        "pending_tokens",
        "held",
        "parts",
        "slot",
        "finish_reason",
        "cancel_requested",
        "submitted_at",
        "admitted_at",
        "first_token_at",
        "engine_seconds",
        "block_hashes",
        "cached_len",
        "logprobs",
        "top_logprobs",
        "step_logprob",
        "pending_logprobs",
        "all_logprobs",
        "constraint",
    )

    def __init__(self, request: GenerationRequest, prompt_ids: list[int], context_window: int):
        sp = request.sampling
        self.request = request
        self.request_id = request.request_id
        self.stream: CpuGenerationStream | None = None
        self.prompt_ids = prompt_ids
        self.prompt_len = len(prompt_ids)
        self.max_tokens = min(sp.max_tokens, context_window - self.prompt_len)
        self.temperature = float(sp.temperature)
        # (Near-)zero temperature, or top_p 0 (a nucleus of only the most likely token): argmax.
        self.greedy = self.temperature < 1e-5 or float(sp.top_p) <= 0.0
        self.top_p = float(sp.top_p)
        self.seed = sp.seed
        # One uniform draw per sampled token, from the request's own generator
        # when it has a seed: same seed, same draws, whatever else is batched.
        self.rng: random.Random | None = None
        self.stops = tuple(s for s in sp.stop if s)
        self.decoder = None
        self.n_out = 0
        self.last_token = -1
        self.pending_tokens = 0  # generated tokens not yet reported in a TextDelta
        self.held = ""  # decoded text held back because it may start a stop string
        self.parts: list[str] = []  # text delivered in deltas
        self.slot = -1
        self.finish_reason: str | None = None
        self.cancel_requested = False
        self.submitted_at = 0.0
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.engine_seconds = 0.0
        self.block_hashes: list[int] = []
        self.cached_len = 0  # prompt positions taken from the prefix cache
        self.logprobs = bool(sp.logprobs)
        self.top_logprobs = int(sp.top_logprobs) if sp.logprobs else 0
        # Set by _sample for the token _on_token is about to take: (its logprob, ((id, logprob), ...) top).
        self.step_logprob: tuple[float, tuple[tuple[int, float], ...]] | None = None
        self.pending_logprobs: list[TokenLogprob] = []  # not yet reported in a TextDelta
        self.all_logprobs: list[TokenLogprob] | None = [] if self.logprobs else None
        # The response_format grammar (compiled off the scheduler thread before submission), or None.
        self.constraint: GrammarConstraint | None = None


def prompt_block_hashes(prompt_ids: list[int], block: int) -> list[int]:
    """A chained hash per full ``block`` of the prompt: equal hashes mean equal prefixes up to that block."""
    hashes, h = [], 0
    for end in range(block, len(prompt_ids) + 1, block):
        h = hash((h, tuple(prompt_ids[end - block:end])))
        hashes.append(h)
    return hashes


class _ModelState:
    def __init__(self, config: ModelConfig):
        self.config = config
        self.name = config.name
        self.model: LlamaModel | None = None
        self.build_lock = threading.Lock()
        self.waiting: deque[_Sequence] = deque()  # appended by callers, popped by the scheduler
        self.running: list[_Sequence] = []  # running[i].slot == i
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.requests_finished = 0
        self.cancel_pending = False  # some waiting sequence may have been cancelled
        # Prefix cache: KV of full prompt blocks, keyed by chained block hash, least recently used first.
        self.prefix_blocks: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # prompt tokens found (not recomputed)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting)


class CpuEngine(Engine):
    """Continuous-batching engine for the ``tollgate-*`` models, in this process.

    ``busy_seconds``: total wall time of all forward steps.
    ``step_log``: the last ``step_log_size`` :class:`StepRecord`.
    ``stats()``: running / waiting counts per model and token counters.

    Beyond the core sampling parameters it honours ``logprobs`` / ``top_logprobs``
    and ``response_format`` (json_object, json_schema: constrained decoding,
    ``structured.py``); constrained and free sequences share every batched step.
    No penalties, logit bias or tools yet.
    """

    supported_parameters = frozenset({"logprobs", "top_logprobs", "response_format"})

    def __init__(
        self,
        models: Iterable[str] = DEFAULT_MODELS,
        max_num_seqs: int = 32,
        max_num_batched_tokens: int = 4096,
        step_log_size: int = 4096,
        enable_prefix_caching: bool = True,
        prefix_cache_blocks: int = 1024,
        prefix_block_size: int = 16,
        threads: int = 0,
    ):
        models = tuple(models)
        unknown = [m for m in models if m not in MODEL_CONFIGS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODEL_CONFIGS)}")
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if threads:
            torch.set_num_threads(threads)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_prefix_caching = enable_prefix_caching
        self.prefix_cache_blocks = prefix_cache_blocks
        self.prefix_block_size = prefix_block_size
        self.tokenizer = get_tokenizer()
        self._states: dict[str, _ModelState] = {m: _ModelState(MODEL_CONFIGS[m]) for m in models}
        self.step_log: deque[StepRecord] = deque(maxlen=step_log_size)
        self._busy_seconds = 0.0
        self._steps = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._pending_wakes: list[CpuGenerationStream] = []
        self._shared_rng = random.Random(os.urandom(16))  # for requests without a seed
        self._grammar_vocabulary: GrammarVocabulary | None = None
        self._grammar_lock = threading.Lock()

    # ------------------------------------------------------------ Engine API
    def model_names(self) -> list[str]:
        return list(self._states)

    def context_window(self, model: str) -> int:
        return self._state(model).config.context_window

    def count_prompt_tokens(self, model: str, messages: tuple[ChatMessage, ...]) -> int:
        self._state(model)
        return self.tokenizer.count_chat(messages)

    def stream(self, request: GenerationRequest) -> "CpuGenerationStream":
        ms = self._state(request.model)
        sp = request.sampling
        if sp.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if sp.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 <= sp.top_p <= 1.0:
            raise ValueError("top_p must be in [0, 1]")
        if request.prompt is not None:
            prompt_ids = self.tokenizer.encode_prompt(request.prompt)
        else:
            prompt_ids = self.tokenizer.encode_chat(request.messages)
        limit = ms.config.context_window - 1
        if len(prompt_ids) > limit:
            raise PromptTooLong(len(prompt_ids), limit)
        if self._stopping:
            raise EngineError("the CPU engine is shut down")
        seq = _Sequence(request, prompt_ids, ms.config.context_window)
        stream = CpuGenerationStream(self, seq)
        seq.stream = stream
        return stream

    async def aclose(self) -> None:
        await asyncio.to_thread(self.shutdown)

    # ------------------------------------------------------------ extras
    @property
    def busy_seconds(self) -> float:
        return self._busy_seconds

    def grammar_vocabulary(self) -> GrammarVocabulary:
        """The vocabulary as the grammar library sees it (built on the first structured request, ~0.5 s)."""
        if self._grammar_vocabulary is None:
            with self._grammar_lock:
                if self._grammar_vocabulary is None:
                    self._grammar_vocabulary = GrammarVocabulary(self.tokenizer, self.tokenizer.allowed_ids())
        return self._grammar_vocabulary

    def constraint_for(self, response_format: dict) -> GrammarConstraint:
        """A fresh grammar state enforcing ``response_format``; EngineRejected (param response_format) if it
        cannot be enforced. Blocking (compiles the schema): call it off the event loop."""
        try:
            return self.grammar_vocabulary().constraint(response_format)
        except StructuredOutputError as exc:
            raise EngineRejected(f"Invalid 'response_format': {exc}", param="response_format") from None

    def load(self, model: str) -> None:
        """Build ``model`` now (otherwise it is built on its first request)."""
        self._ensure_model(self._state(model))

    def stats(self) -> dict:
        models = {}
        for name, ms in self._states.items():
            models[name] = {
                "loaded": ms.model is not None,
                "running": len(ms.running),
                "waiting": len(ms.waiting),
                "prompt_tokens": ms.prompt_tokens,
                "generation_tokens": ms.generation_tokens,
                "requests_finished": ms.requests_finished,
                "prefix_cache_queries": ms.prefix_cache_queries,
                "prefix_cache_hits": ms.prefix_cache_hits,
                "prefix_cache_blocks": len(ms.prefix_blocks),
                "kv_cache_tokens": sum(seq.prompt_len + seq.n_out for seq in list(ms.running)),
            }
        return {
            "models": models,
            "running": sum(m["running"] for m in models.values()),
            "waiting": sum(m["waiting"] for m in models.values()),
            "prompt_tokens_total": sum(m["prompt_tokens"] for m in models.values()),
            "generation_tokens_total": sum(m["generation_tokens"] for m in models.values()),
            "prefix_cache_queries_total": sum(m["prefix_cache_queries"] for m in models.values()),
            "prefix_cache_hits_total": sum(m["prefix_cache_hits"] for m in models.values()),
            # KV-cache use: tokens held by running sequences over the slots x context the engine may hold.
            "kv_cache_usage": sum(m["kv_cache_tokens"] for m in models.values()) / max(
                1, self.max_num_seqs * max(ms.config.context_window for ms in self._states.values())
            ),
            "steps_total": self._steps,
            "busy_seconds": self._busy_seconds,
        }

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the scheduler thread; unfinished requests fail with EngineError."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None:
            self._fail_all(EngineError("the CPU engine is shut down"))

    # ------------------------------------------------------------ internals
    def _state(self, model: str) -> _ModelState:
        try:
            return self._states[model]
        except KeyError:
            raise EngineError(f"model {model!r} is not served by this engine") from None

    def _ensure_model(self, ms: _ModelState) -> LlamaModel:
        if ms.model is None:
            with ms.build_lock:
                if ms.model is None:
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        model = LlamaModel(ms.config, self.tokenizer.allowed_ids())
                    model.max_slots = self.max_num_seqs
                    ms.model = model
                    logger.info("built %s in %.2fs", ms.name, time.perf_counter() - t0)
        return ms.model

    def _request_cancel(self, seq: _Sequence) -> None:
        seq.cancel_requested = True
        self._states[seq.request.model].cancel_pending = True
        self._wake.set()

    def _submit(self, seq: _Sequence) -> None:
        if self._stopping:
            raise EngineError("the CPU engine is shut down")
        seq.submitted_at = time.perf_counter()
        waiting = self._states[seq.request.model].waiting
        waiting.append(seq)
        if self._stopping:  # raced with shutdown(): the scheduler may never see it
            try:
                waiting.remove(seq)
            except ValueError:
                pass
            raise EngineError("the CPU engine is shut down")
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="tollgate-cpu-engine", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        self.tokenizer.warm()
        try:
            with torch.inference_mode():
                while not self._stopping:
                    self._wake.clear()
                    worked = False
                    for ms in self._states.values():
                        if ms.has_work():
                            worked = True
                            try:
                                self._iterate_model(ms)
                            except Exception as exc:  # never let one bad step kill the thread
                                logger.exception("CPU engine step failed for %s", ms.name)
                                # A model that cannot be built fails its queue too.
                                self._fail_model(
                                    ms, EngineError(f"CPU engine step failed: {exc!r}"), waiting_too=ms.model is None
                                )
                            self._flush_wakes()
                    if not worked:
                        self._wake.wait()
        finally:
            self._fail_all(EngineError("the CPU engine is shut down"))

    def _fail_model(self, ms: _ModelState, exc: BaseException, waiting_too: bool = False) -> None:
        seqs = list(ms.running)
        ms.running = []
        if waiting_too:
            while ms.waiting:
                seqs.append(ms.waiting.popleft())
        for seq in seqs:
            if seq.stream is not None:
                seq.stream._fail(exc)
        if ms.model is not None:
            ms.model.release_cache()

    def _fail_all(self, exc: BaseException) -> None:
        for ms in self._states.values():
            self._fail_model(ms, exc, waiting_too=True)
        self._flush_wakes()

    def _iterate_model(self, ms: _ModelState) -> None:
        model = self._ensure_model(ms)
        running = ms.running
        for seq in running:
            if seq.cancel_requested:
                seq.finish_reason = "cancelled"
        if any(seq.finish_reason for seq in running):
            self._retire(ms, model)
        if ms.cancel_pending:  # cancelled before admission: answer now, not when admitted
            ms.cancel_pending = False
            for seq in [seq for seq in ms.waiting if seq.cancel_requested]:
                ms.waiting.remove(seq)
                seq.finish_reason = "cancelled"
                self._finalize(ms, seq)

        # Admission + prefill.
        if ms.waiting and len(ms.running) < self.max_num_seqs:
            batch: list[_Sequence] = []
            longest = 0
            room = self.max_num_seqs - len(ms.running)
            while ms.waiting and len(batch) < room:
                seq = ms.waiting[0]
                if seq.cancel_requested:
                    ms.waiting.popleft()
                    seq.finish_reason = "cancelled"
                    self._finalize(ms, seq)
                    continue
                new_longest = max(longest, seq.prompt_len)
                if batch and new_longest * (len(batch) + 1) > self.max_num_batched_tokens:
                    break
                ms.waiting.popleft()
                batch.append(seq)
                longest = new_longest
            if batch:
                self._prefill(ms, model, batch, longest)

        if ms.running:
            self._decode(ms, model)
        if not ms.running and not ms.waiting:
            model.release_cache()

    def _match_prefixes(self, ms: _ModelState, batch: list[_Sequence]) -> None:
        """Set each sequence's ``cached_len``: the longest run of its full prompt blocks in the prefix cache."""
        block = self.prefix_block_size
        window = ms.config.context_window
        for seq in batch:
            seq.block_hashes = prompt_block_hashes(seq.prompt_ids, block)
            usable = (seq.prompt_len - 1) // block  # at least one prompt token is always computed
            hits = 0
            while hits < usable and seq.block_hashes[hits] in ms.prefix_blocks:
                hits += 1
            seq.cached_len = hits * block
        # Rows are padded to the longest uncached rest; a padded row must stay inside the context window.
        while True:
            longest_new = max(seq.prompt_len - seq.cached_len for seq in batch)
            over = [seq for seq in batch if seq.cached_len and seq.cached_len + longest_new > window]
            if not over:
                break
            for seq in over:
                seq.cached_len = 0
        for seq in batch:
            ms.prefix_cache_queries += seq.prompt_len
            ms.prefix_cache_hits += seq.cached_len
            for h in seq.block_hashes[: seq.cached_len // block]:
                ms.prefix_blocks.move_to_end(h)

    def _store_prefixes(self, ms: _ModelState, model: LlamaModel, batch: list[_Sequence]) -> None:
        block = self.prefix_block_size
        store = ms.prefix_blocks
        for seq in batch:
            for i in range(seq.cached_len // block, len(seq.block_hashes)):
                h = seq.block_hashes[i]
                if h in store:
                    store.move_to_end(h)
                else:
                    store[h] = model.read_prefix(seq.slot, i * block, (i + 1) * block)
        while len(store) > self.prefix_cache_blocks:
            store.popitem(last=False)

    def _prefill(self, ms: _ModelState, model: LlamaModel, batch: list[_Sequence], longest: int) -> None:
        t0 = time.perf_counter()
        B = len(batch)
        start = len(ms.running)
        if self.enable_prefix_caching:
            self._match_prefixes(ms, batch)
        if any(seq.cached_len for seq in batch):
            self._prefill_after_prefix(ms, model, batch, t0)
            return
        rows = []
        for i, seq in enumerate(batch):
            rows.append(seq.prompt_ids + [0] * (longest - seq.prompt_len))
            seq.slot = start + i
            seq.admitted_at = t0
            seq.decoder = self._decoder_for(seq)
            if not seq.greedy and seq.seed is not None:
                seq.rng = random.Random(seq.seed)
        tokens = torch.tensor(rows, dtype=torch.long)
        lengths = torch.tensor([seq.prompt_len for seq in batch], dtype=torch.long)
        ms.running = ms.running + batch
        logits = model.prefill(tokens, lengths, start)
        self._finish_prefill(ms, model, batch, logits, t0)

    def _prefill_after_prefix(self, ms: _ModelState, model: LlamaModel, batch: list[_Sequence], t0: float) -> None:
        """Prefill where some prompts start with cached blocks: copy those in, compute only the rest."""
        start = len(ms.running)
        block = self.prefix_block_size
        longest_new = max(seq.prompt_len - seq.cached_len for seq in batch)
        model.ensure_cache(start + len(batch), max(seq.cached_len for seq in batch) + longest_new)
        rows = []
        for i, seq in enumerate(batch):
            rest = seq.prompt_ids[seq.cached_len:]
            rows.append(rest + [0] * (longest_new - len(rest)))
            seq.slot = start + i
            seq.admitted_at = t0
            seq.decoder = self._decoder_for(seq)
            if not seq.greedy and seq.seed is not None:
                seq.rng = random.Random(seq.seed)
            if seq.cached_len:
                blocks = [ms.prefix_blocks[h] for h in seq.block_hashes[: seq.cached_len // block]]
                model.write_prefix(seq.slot, torch.cat([k for k, _ in blocks], dim=2),
                                   torch.cat([v for _, v in blocks], dim=2))
        tokens = torch.tensor(rows, dtype=torch.long)
        starts = torch.tensor([seq.cached_len for seq in batch], dtype=torch.long)
        lengths = torch.tensor([seq.prompt_len - seq.cached_len for seq in batch], dtype=torch.long)
        ms.running = ms.running + batch
        logits = model.prefill_after_prefix(tokens, starts, lengths, start)
        self._finish_prefill(ms, model, batch, logits, t0)

    def _finish_prefill(self, ms: _ModelState, model: LlamaModel, batch: list[_Sequence], logits: torch.Tensor,
                        t0: float) -> None:
        ids = self._sample(model, logits, batch)
        now = time.perf_counter()
        for seq, tid in zip(batch, ids):
            self._on_token(seq, tid, now)
        self._flush_wakes()
        if self.enable_prefix_caching:
            self._store_prefixes(ms, model, batch)
        ms.prompt_tokens += sum(seq.prompt_len for seq in batch)
        ms.generation_tokens += len(batch)
        computed = tuple(seq.prompt_len - seq.cached_len for seq in batch)
        n_computed = sum(computed)
        dt = time.perf_counter() - t0
        for seq, n in zip(batch, computed):
            seq.engine_seconds += dt * n / n_computed
        self._record(ms, "prefill", batch, computed, dt)
        self._retire(ms, model)

    def _decode(self, ms: _ModelState, model: LlamaModel) -> None:
        t0 = time.perf_counter()
        running = ms.running
        B = len(running)
        positions = [seq.prompt_len + seq.n_out - 1 for seq in running]
        tokens = torch.tensor([seq.last_token for seq in running], dtype=torch.long)
        pos = torch.tensor(positions, dtype=torch.long)
        logits = model.decode(tokens, pos, max(positions) + 1)
        ids = self._sample(model, logits, running)
        now = time.perf_counter()
        for seq, tid in zip(running, ids):
            self._on_token(seq, tid, now)
        self._flush_wakes()
        ms.generation_tokens += B
        dt = time.perf_counter() - t0
        share = dt / B
        for seq in running:
            seq.engine_seconds += share
        self._record(ms, "decode", running, (1,) * B, dt)
        self._retire(ms, model)

    def _record(self, ms: _ModelState, kind: str, seqs: list[_Sequence], tokens: tuple[int, ...], dt: float):
        self._busy_seconds += dt
        self.step_log.append(StepRecord(self._steps, ms.name, kind, tuple(s.request_id for s in seqs), tokens, dt))
        self._steps += 1

    def _retire(self, ms: _ModelState, model: LlamaModel) -> None:
        """Finalize finished sequences and keep the running ones in slots 0..n-1."""
        running = ms.running
        if not any(seq.finish_reason for seq in running):
            return
        survivors = [seq for seq in running if not seq.finish_reason]
        n = len(survivors)
        free = [seq.slot for seq in running[:n] if seq.finish_reason]
        movers = [seq for seq in survivors if seq.slot >= n]
        for seq, dst in zip(movers, free):
            model.move_slot(seq.slot, dst, seq.prompt_len + seq.n_out)
            seq.slot = dst
        survivors.sort(key=lambda s: s.slot)
        ms.running = survivors
        for seq in running:
            if seq.finish_reason:
                self._finalize(ms, seq)

    def _decoder_for(self, seq: _Sequence):
        # A constrained answer reads as the grammar saw it (structured.py says why).
        return self.tokenizer.continuation_decoder() if seq.constraint is not None else self.tokenizer.decoder()

    # -------------------------------------------------------------- sampling
    def _grammar_masks(self, seqs: list[_Sequence]) -> dict[int, np.ndarray]:
        """Row -> bool per logits column (allowed by the row's grammar), for each constrained row."""
        masks = {}
        for i, seq in enumerate(seqs):
            constraint = seq.constraint
            if constraint is None:
                continue
            allowed = constraint.next_mask(seq.max_tokens - seq.n_out, seq.n_out)
            if not constraint.failed:  # else nothing may follow: _on_token ends the answer with "length"
                masks[i] = allowed
        return masks

    def _note_logprobs(self, raw: torch.Tensor, ids: list[int], cols: list[int], seqs: list[_Sequence],
                       model: LlamaModel) -> None:
        """Each logprob-asking row's chosen-token logprob and top alternatives, from the raw logits."""
        rows = [i for i, seq in enumerate(seqs) if seq.logprobs]
        if not rows:
            return
        sub = raw if len(rows) == len(seqs) else raw.index_select(0, torch.tensor(rows, dtype=torch.long))
        lp = torch.log_softmax(sub.float(), dim=-1)
        chosen = lp.gather(1, torch.tensor([[cols[i]] for i in rows], dtype=torch.long)).view(-1).tolist()
        k = max(seqs[i].top_logprobs for i in rows)
        top_vals = top_idx = None
        if k:
            top = torch.topk(lp, k, dim=-1)
            top_vals, top_idx = top.values.tolist(), top.indices.tolist()
        allowed = model.allowed_ids_list
        for j, i in enumerate(rows):
            seq = seqs[i]
            n = seq.top_logprobs
            alternatives = tuple((allowed[c], v) for c, v in zip(top_idx[j][:n], top_vals[j][:n])) if n else ()
            seq.step_logprob = (chosen[j], alternatives)

    def _sample(self, model: LlamaModel, logits: torch.Tensor, seqs: list[_Sequence]) -> list[int]:
        """Next token id for each row: constrained rows masked by their grammar, logprobs noted from the raw
        logits (vLLM's default: the model's distribution, before temperature, top-p or the mask)."""
        masks = self._grammar_masks(seqs)
        cols = self._sample_columns(model, logits, seqs, masks)
        allowed = model.allowed_ids_list
        ids = [allowed[c] for c in cols]
        self._note_logprobs(logits, ids, cols, seqs, model)
        for seq, tid in zip(seqs, ids):
            if seq.constraint is not None and not seq.constraint.failed:
                seq.constraint.accept(tid)
        return ids

    def _sample_columns(self, model: LlamaModel, logits: torch.Tensor, seqs: list[_Sequence],
                        masks: dict[int, np.ndarray]) -> list[int]:
        """Next logits column for each row of ``logits`` (columns are ``model.allowed_ids``).

        Greedy rows take the argmax. Sampled rows draw one uniform number each
        (from the request's own seeded generator when it has a seed) and invert the
        CDF of softmax(logits / temperature), optionally cut to the top-p
        nucleus. The CDF is inverted in two levels (block sums, then within
        the chosen block) so no full-vocabulary cumsum is needed. A row in
        ``masks`` only takes columns its mask allows: their weights are zeroed
        after the exponential, never set to -inf before it (torch's exp is up to
        30x slower on a row of -inf or underflowing values).
        """
        arr = logits.numpy()
        B, V = arr.shape
        sampled = [i for i, seq in enumerate(seqs) if not seq.greedy]
        if not sampled:
            idx = np.argmax(arr, axis=1)
        else:
            if len(sampled) == B:
                idx = np.empty(B, dtype=np.int64)
                sub = logits
            else:
                idx = np.argmax(arr, axis=1)  # greedy rows keep these
                sub = logits.index_select(0, torch.tensor(sampled, dtype=torch.long))
            temps = [seqs[i].temperature for i in sampled]
            if any(t != 1.0 for t in temps):
                sub = sub / torch.tensor(temps, dtype=torch.float32).view(-1, 1)
            peak = sub.amax(dim=-1, keepdim=True)
            masked = [(j, i) for j, i in enumerate(sampled) if i in masks]
            every_row = len(masked) == len(sampled)  # all constrained: no row copies needed
            if masked:
                rows = torch.tensor([j for j, _ in masked], dtype=torch.long)
                allowed = torch.from_numpy(np.stack([masks[i] for _, i in masked]))
                # Normalise on the allowed tokens, so none of them underflows.
                own = sub if every_row else sub.index_select(0, rows)
                own_peak = torch.where(allowed, own, float("-inf")).amax(dim=-1, keepdim=True)
                peak = own_peak if every_row else peak.index_copy_(0, rows, own_peak)
            weights = (sub - peak).exp_()  # unnormalised probabilities
            if masked:
                if every_row:
                    weights.masked_fill_(~allowed, 0.0)
                else:
                    weights.index_copy_(0, rows, weights.index_select(0, rows).masked_fill_(~allowed, 0.0))
            wn = weights.numpy()
            for j, i in enumerate(sampled):
                top_p = seqs[i].top_p
                if top_p < 1.0:
                    row = wn[j]
                    srt = np.sort(row)[::-1]
                    csum = np.cumsum(srt, dtype=np.float64)
                    k = min(int(np.searchsorted(csum, top_p * csum[-1])), V - 1)
                    row[row < srt[k]] = 0.0
            shared = self._shared_rng.random
            u = torch.tensor(
                [(seqs[i].rng.random() if seqs[i].rng is not None else shared()) for i in sampled],
                dtype=torch.float32,
            ).view(-1, 1)
            choice = _invert_cdf(weights, u, model.sample_block)
            for j, i in enumerate(sampled):
                c = int(choice[j])
                if not wn[j, c] > 0.0:  # float rounding at a block edge: take the last possible token
                    c = int(np.flatnonzero(wn[j])[-1])
                idx[i] = c
        for i, allowed in masks.items():
            if seqs[i].greedy:
                idx[i] = int(np.argmax(np.where(allowed, arr[i], -np.inf)))
        return idx.tolist()

    # ------------------------------------------------------------- emission
    def _on_token(self, seq: _Sequence, tid: int, now: float) -> None:
        seq.n_out += 1
        seq.pending_tokens += 1
        seq.last_token = tid
        if seq.first_token_at is None:
            seq.first_token_at = now
        if seq.constraint is not None and seq.constraint.failed:
            # The grammar allows nothing more (this token was not constrained): end without its text.
            seq.finish_reason = "length"
            self._flush(seq)
            return
        if tid == SEP_ID:
            seq.finish_reason = "stop"
            self._flush(seq)
            return
        if seq.step_logprob is not None:
            self._note_token_logprob(seq, tid)
        piece = seq.decoder.push(tid)
        if seq.stops:
            held = seq.held + piece
            cut = -1
            for s in seq.stops:
                j = held.find(s)
                if j != -1 and (cut == -1 or j < cut):
                    cut = j
            if cut != -1:
                seq.held = held[:cut]
                seq.finish_reason = "stop"
                self._flush(seq)
                return
            keep = 0
            for s in seq.stops:
                for k in range(min(len(held), len(s) - 1), keep, -1):
                    if held.endswith(s[:k]):
                        keep = k
                        break
            if keep:
                seq.held = held[-keep:]
                piece = held[:-keep]
            else:
                seq.held = ""
                piece = held
        if seq.n_out >= seq.max_tokens:
            seq.finish_reason = "length"
            if seq.held:
                piece += seq.held
                seq.held = ""
        if piece or seq.finish_reason:
            self._emit(seq, piece)

    def _note_token_logprob(self, seq: _Sequence, tid: int) -> None:
        """The token's OpenAI logprob entry, its text as it reads here (before the decoder takes it)."""
        logprob, alternatives = seq.step_logprob
        seq.step_logprob = None
        peek = seq.decoder.peek
        text = peek(tid)
        top = tuple(TokenLogprob(peek(a), v, tuple(peek(a).encode())) for a, v in alternatives)
        entry = TokenLogprob(text, logprob, tuple(text.encode()), top)
        seq.pending_logprobs.append(entry)
        seq.all_logprobs.append(entry)

    def _flush(self, seq: _Sequence) -> None:
        text, seq.held = seq.held, ""
        self._emit(seq, text)

    def _emit(self, seq: _Sequence, text: str) -> None:
        if not text and not seq.pending_tokens:
            return
        seq.parts.append(text)
        delta = TextDelta(text, seq.pending_tokens)
        if seq.logprobs:
            delta.logprobs, seq.pending_logprobs = seq.pending_logprobs, []
        seq.pending_tokens = 0
        seq.stream._deliver(delta)

    def _flush_wakes(self) -> None:
        """One call_soon_threadsafe per event loop for all streams that got items."""
        pending = self._pending_wakes
        if not pending:
            return
        self._pending_wakes = []
        if len(pending) == 1 or all(st._loop is pending[0]._loop for st in pending):
            groups = {pending[0]._loop: pending}
        else:
            groups = {}
            for st in pending:
                groups.setdefault(st._loop, []).append(st)
        for loop, streams in groups.items():
            try:
                loop.call_soon_threadsafe(_wake_streams, streams)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                for st in streams:
                    st._seq.cancel_requested = True

    def _finalize(self, ms: _ModelState, seq: _Sequence) -> None:
        ms.requests_finished += 1
        extra = {"model": ms.name}
        if seq.admitted_at is not None:
            extra["queue_seconds"] = extra["queue_wait_s"] = seq.admitted_at - seq.submitted_at
        ttft = seq.first_token_at - seq.submitted_at if seq.first_token_at is not None else None
        result = GenerationResult(
            text="".join(seq.parts),
            prompt_tokens=seq.prompt_len,
            completion_tokens=seq.n_out,
            finish_reason=seq.finish_reason or "cancelled",
            cached_prompt_tokens=seq.cached_len,
            time_to_first_token_s=ttft,
            engine_seconds=seq.engine_seconds,
            extra=extra,
            logprobs=seq.all_logprobs,
        )
        seq.stream._finish(result)


def _wake_streams(streams: list["CpuGenerationStream"]) -> None:
    for st in streams:
        st._on_wake()


def _invert_cdf(weights: torch.Tensor, u: torch.Tensor, block: int) -> np.ndarray:
    """Index drawn from each row of non-negative ``weights`` (k, V) at quantile ``u`` (k, 1) in [0, 1)."""
    k, V = weights.shape
    if V % block:
        weights = torch.nn.functional.pad(weights, (0, block - V % block))
    nb = weights.shape[1] // block
    blocks = weights.view(k, nb, block)
    bcdf = blocks.sum(dim=-1).cumsum(dim=-1)  # (k, nb)
    target = u * bcdf[:, -1:]
    bi = torch.searchsorted(bcdf, target, right=True).clamp_(max=nb - 1)  # (k, 1)
    before = torch.where(bi > 0, bcdf.gather(1, (bi - 1).clamp_(min=0)), torch.zeros_like(target))
    inner = blocks[torch.arange(k), bi.view(-1)].cumsum(dim=-1)  # (k, block)
    j = torch.searchsorted(inner, target - before, right=True).clamp_(max=block - 1)
    return (bi * block + j).view(-1).clamp_(max=V - 1).numpy()


class CpuGenerationStream(GenerationStream):
    """Async iterator of TextDelta fed by the engine's scheduler thread.

    The request is queued on the engine when iteration starts. ``result`` is
    set when iteration ends (or ``cancel()`` returns). Closing the iterator
    early or cancelling the task that consumes it cancels the generation.
    """

    def __init__(self, engine: CpuEngine, seq: _Sequence):
        self._engine = engine
        self._seq = seq
        self.result: GenerationResult | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._done: asyncio.Future | None = None
        self._wake_pending = False
        self._final: GenerationResult | None = None
        self._error: BaseException | None = None
        self._started = False
        self._cancelled = False

    @property
    def request_id(self) -> str:
        return self._seq.request_id

    @property
    def prompt_tokens(self) -> int:
        return self._seq.prompt_len

    # ------------------------------------------------- scheduler-thread side
    def _deliver(self, item) -> None:
        """Queue ``item``; the engine wakes the consumer's loop at the end of the step."""
        self._items.append(item)
        if not self._wake_pending:
            self._wake_pending = True
            self._engine._pending_wakes.append(self)

    def _finish(self, result: GenerationResult) -> None:
        self._final = result
        self._deliver(_DONE)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        if self._loop is not None:
            self._deliver(exc)

    # ---------------------------------------------------- event-loop side
    def _on_wake(self) -> None:
        self._wake_pending = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if (self._final is not None or self._error is not None) and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _publish(self) -> None:
        if self.result is None and self._final is not None:
            self.result = self._final

    async def _iterate(self) -> AsyncIterator[TextDelta]:
        if self._started:
            raise RuntimeError("a generation stream can be iterated only once")
        self._started = True
        if self._cancelled:
            return
        response_format = self._seq.request.sampling.response_format
        if response_format is not None and self._seq.constraint is None:
            # Compiled on a worker thread: neither the event loop nor the batch waits for it. A schema that
            # cannot be enforced fails here, before the first token (the caller's 400).
            self._seq.constraint = await asyncio.to_thread(self._engine.constraint_for, response_format)
            if self._cancelled:
                return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = loop.create_future()
        self._engine._submit(self._seq)
        ended = False
        try:
            while True:
                items = self._items
                while items:
                    if self._cancelled:
                        return
                    item = items.popleft()
                    if item is _DONE:
                        ended = True
                        self._publish()
                        return
                    if isinstance(item, BaseException):
                        ended = True
                        raise item
                    yield item
                if self._cancelled:
                    return
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None
        finally:
            if not ended:
                await self._stop_engine_side()

    async def _stop_engine_side(self) -> None:
        """Ask the scheduler to drop the sequence and wait until it has (result set)."""
        self._cancelled = True
        self._engine._request_cancel(self._seq)
        done = self._done
        if done is not None and not done.done():
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout=30)
            except (TimeoutError, RuntimeError):  # scheduler stuck or loop closing: result stays unset
                pass
            finally:
                self._publish()
        self._publish()

    async def cancel(self) -> None:
        if self.result is not None:
            return
        if not self._started or self._done is None:  # never reached the scheduler (not started, or compiling)
            self._cancelled = True
            self.result = GenerationResult(
                text="",
                prompt_tokens=self._seq.prompt_len,
                completion_tokens=0,
                finish_reason="cancelled",
                extra={"model": self._seq.request.model},
            )
            return
        await self._stop_engine_side()
