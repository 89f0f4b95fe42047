"""Pools at run time: admission queues, replica choice, health.

* ``admit_request``: each pool lets ``replicas x max_in_flight_per_replica``
  requests run at once; up to ``max_queue`` more wait (their wait is measured
  and recorded as queue wait); past that the caller gets :class:`PoolQueueFull`
  with a Retry-After estimate, at once, not a hung socket.
* ``choose_replica``: the healthy replica with the least outstanding work,
  except that requests sharing a prompt prefix prefer the same replica
  (rendezvous hashing on the prefix, with a stable hash so every web process
  agrees), as long as that replica is not much busier than the least loaded
  one. Its prefix cache then hits.
* Health: a failed connection takes a replica out at once; a background
  thread probes every remote replica's ``/health`` (and scrapes ``/metrics``)
  and puts it back when it answers.
* Breakers and retries (``serving.resilience``): each replica has a circuit
  breaker fed by the outcome of every try on it, and each pool a retry
  budget. A generation's try is one replica's stream
  (``PooledGenerationStream``); the generate stage decides whether a failed
  try is retried, as a new attempt. Embeddings retry inside ``embed``.

The state here (in-flight counts, queues) is per web process; with several
web processes each admits up to its own limit (documented in
docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings

from core.memo import loading

from .engines.base import (
    BatchedGenerationStream,
    ChatMessage,
    Engine,
    EngineError,
    EngineRejected,
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    TextDelta,
)
from .engines.registry import cpu_worker_url, in_process_engine
from .engines.remote import RemoteEmbedder, RemoteEngine
from .models import Deployment
from .resilience import BREAKER_OPENED, BREAKER_STATE, OPEN, STATE_VALUE, CircuitBreaker, RetryBudget, backoff_s

logger = logging.getLogger(__name__)

DEFAULT_POOL = "interactive"
EMBEDDING_POOL = "embedding"
IN_PROCESS = "in-process"


class PoolQueueFull(EngineUnavailable):
    def __init__(self, pool: str, retry_after_s: int):
        super().__init__(f"The {pool} pool's queue is full; retry in {retry_after_s} s.")
        self.pool = pool
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class PoolSettings:
    name: str
    kind: str
    max_in_flight_per_replica: int
    max_queue: int
    max_batch_wait_ms: float


class PoolRuntime:
    """One pool's admission queue. Thread-safe; waiters may live on different event loops."""

    def __init__(self, config: PoolSettings, replicas: int):
        self.config = config
        self.name = config.name
        self.max_in_flight = max(1, config.max_in_flight_per_replica * max(1, replicas))
        self.max_queue = config.max_queue
        self.in_flight = 0
        self.admitted_total = 0  # requests let in since start (the autoscaler's request rate)
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = deque()
        self._lock = threading.Lock()
        self._service_s = 1.0  # moving average of how long an admitted request holds its slot
        self.retry_budget = RetryBudget(ratio=settings.TOLLGATE_RETRY_BUDGET_RATIO,
                                        minimum=settings.TOLLGATE_RETRY_BUDGET_MIN,
                                        window_s=settings.TOLLGATE_RETRY_BUDGET_WINDOW_S)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._service_s * (len(self._waiters) + 1) / self.max_in_flight))

    async def admit_request(self) -> float:
        """Wait for a slot; returns the seconds waited. Raises PoolQueueFull when the queue is full."""
        with self._lock:
            if self.in_flight < self.max_in_flight and not self._waiters:
                self.in_flight += 1
                self.admitted_total += 1
                return 0.0
            if len(self._waiters) >= self.max_queue:
                raise PoolQueueFull(self.name, self.retry_after_s())
            self.admitted_total += 1  # counted on arrival: a request that waits is demand all the same
            loop = asyncio.get_running_loop()
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        started = time.perf_counter()
        try:
            await waiter[1]
        except asyncio.CancelledError:
            granted = False
            with self._lock:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    # Already handed a slot: if it arrived, give it back; if the hand-over is still on
                    # its way, _hand_over finds the future cancelled and gives it back.
                    granted = waiter[1].done() and not waiter[1].cancelled()
            if granted:
                self.release()
            raise
        return time.perf_counter() - started

    def release(self, held_s: float | None = None) -> None:
        with self._lock:
            if held_s is not None:
                self._service_s = 0.9 * self._service_s + 0.1 * held_s
            self._release_locked()

    def _release_locked(self) -> None:
        while self._waiters:
            loop, future = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(self._hand_over, future)
                return  # the slot goes to the waiter; in_flight stays the same
            except RuntimeError:  # that loop is closed
                continue
        self.in_flight -= 1

    def _hand_over(self, future: asyncio.Future) -> None:
        if future.done():  # cancelled meanwhile
            self.release()
        else:
            future.set_result(None)


def new_breaker() -> CircuitBreaker:
    return CircuitBreaker(failures=settings.TOLLGATE_BREAKER_FAILURES, error_rate=settings.TOLLGATE_BREAKER_ERROR_RATE,
                          window=settings.TOLLGATE_BREAKER_WINDOW, min_calls=settings.TOLLGATE_BREAKER_MIN_CALLS,
                          open_s=settings.TOLLGATE_BREAKER_OPEN_S)


class ReplicaRuntime:
    def __init__(self, label: str, engine, url: str = ""):
        self.label = label
        self.engine = engine
        self.url = url
        self.outstanding = 0
        self.healthy = True
        self.down_since: float | None = None
        self.metrics: dict[str, float] = {}
        self.breaker = new_breaker()
        self.pool_name = ""  # set by the deployment that holds it

    def publish_state(self) -> None:
        BREAKER_STATE.labels(self.pool_name, self.label).set(STATE_VALUE[self.breaker.state])

    def record_success(self) -> None:
        self.breaker.record_success()
        self.publish_state()

    @property
    def load(self) -> float:
        return self.outstanding + self.metrics.get("waiting", 0.0)

    def engine_stats(self) -> dict[str, float]:
        """The engine's own numbers under the names ``read_engine_metrics`` gives a remote worker's: running,
        waiting, kv_cache_usage, prompt_tokens, generation_tokens, busy_seconds (what the engine knows)."""
        if self.url:
            return dict(self.metrics)
        stats = getattr(self.engine, "stats", None)
        if callable(stats):  # the in-process CPU engine: its scheduler's counters
            s = stats()
            return {"running": float(s.get("running", 0)), "waiting": float(s.get("waiting", 0)),
                    "kv_cache_usage": float(s.get("kv_cache_usage", 0.0)),
                    "prompt_tokens": float(s.get("prompt_tokens_total", 0)),
                    "generation_tokens": float(s.get("generation_tokens_total", 0)),
                    "busy_seconds": float(s.get("busy_seconds", 0.0))}
        busy = getattr(self.engine, "busy_seconds", None)  # the in-process embedder: forward-pass time only
        return {"busy_seconds": float(busy)} if isinstance(busy, (int, float)) else {}

    def record_failure(self, exc: EngineError) -> None:
        """A request failed on this replica: its breaker counts it; an unreachable replica is taken out."""
        if isinstance(exc, EngineUnavailable) and exc.unreachable:
            self.mark_down(str(exc))
        was = self.breaker.state
        self.breaker.record_failure()
        if was != OPEN and self.breaker.state == OPEN:
            BREAKER_OPENED.labels(self.pool_name, self.label).inc()
            logger.warning("replica %s: circuit open for %.0f s after %s", self.label, self.breaker.open_s, exc)
        self.publish_state()

    def mark_down(self, reason: str) -> None:
        if self.healthy:
            logger.warning("replica %s taken out: %s", self.label, reason)
        self.healthy = False
        self.down_since = self.down_since or time.monotonic()

    def mark_up(self) -> None:
        if not self.healthy:
            logger.info("replica %s back in", self.label)
        self.healthy = True
        self.down_since = None


def prefix_key(messages: tuple[ChatMessage, ...], prompt: str | None = None) -> str:
    """The start of the prompt, which decides prefix affinity."""
    n = settings.TOLLGATE_PREFIX_AFFINITY_CHARS
    text = prompt if prompt is not None else "\n".join(f"{m.role}: {m.content}" for m in messages)
    return text[:n]


def choose_replica(replicas: list[ReplicaRuntime], key: str, exclude: set[str] = frozenset()) -> ReplicaRuntime | None:
    """Least outstanding work, preferring the prefix's rendezvous replica unless it is clearly busier.

    A replica whose circuit is open is never chosen; among the others, health-checked ones come first
    (all marked down: try them anyway, a health mark can be stale).
    """
    candidates = [r for r in replicas if r.label not in exclude and r.breaker.allows()]
    healthy = [r for r in candidates if r.healthy] or candidates
    if not healthy:
        return None
    least = min(healthy, key=lambda r: r.load)
    if not key or len(healthy) == 1:
        return least
    preferred = max(healthy, key=lambda r: zlib.crc32(f"{r.label}\n{key}".encode()))
    if preferred.load <= least.load + settings.TOLLGATE_PREFIX_AFFINITY_SLACK:
        return preferred
    return least


class DeploymentRuntime(Engine):
    """A model's replicas behind one pool, seen by the gateway as one Engine."""

    def __init__(self, model: str, pool: PoolRuntime, replicas: list[ReplicaRuntime]):
        self.model = model
        self.pool = pool
        self.replicas = replicas
        for replica in replicas:
            replica.pool_name = pool.name
            replica.publish_state()

    def model_names(self) -> list[str]:
        return [self.model]

    def _any_engine(self) -> Engine:
        return (next((r for r in self.replicas if r.healthy), None) or self.replicas[0]).engine

    def count_prompt_tokens(self, model: str, messages: tuple[ChatMessage, ...]) -> int:
        return self._any_engine().count_prompt_tokens(model, messages)

    def context_window(self, model: str) -> int:
        return self._any_engine().context_window(model)

    @property
    def supported_parameters(self) -> frozenset[str]:
        """What every replica honours: a request may land on any of them."""
        return frozenset.intersection(*(frozenset(r.engine.supported_parameters) for r in self.replicas))

    def stream(self, request: GenerationRequest, exclude: frozenset[str] = frozenset()) -> "PooledGenerationStream":
        """One try on one replica (not one in ``exclude`` while another can take it)."""
        return PooledGenerationStream(self, request, exclude)

    async def embed(self, texts: list[str]) -> "PooledEmbedding":
        """Embed ``texts`` behind the pool's admission queue, on a healthy replica, failing over a dead one.

        Raises PoolQueueFull (nothing spent) or EngineError (``replica`` and
        ``queue_wait_s`` on the exception say where it failed).
        """
        queue_wait_s = await self.pool.admit_request()
        admitted = time.perf_counter()
        self.pool.retry_budget.record_request()
        tried: set[str] = set()
        replica: ReplicaRuntime | None = None
        try:
            for tries in itertools.count(1):
                replica = claim_replica(self, "", tried)
                replica.outstanding += 1
                try:
                    result = await replica.engine.embed(texts)
                    replica.record_success()
                    return PooledEmbedding(result=result, replica=replica.label, queue_wait_s=queue_wait_s)
                except EngineUnavailable as exc:
                    replica.mark_down(str(exc))
                    replica.record_failure(exc)
                    tried.add(replica.label)
                    if not (exc.retry_safe and tries < settings.TOLLGATE_RETRY_MAX_ATTEMPTS
                            and self.pool.retry_budget.try_spend()):
                        raise
                    await asyncio.sleep(retry_backoff_s(tries))
                except EngineError as exc:
                    replica.record_failure(exc)
                    raise
                finally:
                    replica.outstanding -= 1
        except EngineError as exc:
            exc.replica, exc.queue_wait_s = (replica.label if replica else ""), queue_wait_s
            raise
        finally:
            self.pool.release(time.perf_counter() - admitted)


@dataclass
class PooledEmbedding:
    result: object  # engines.embeddings.EmbeddingResult
    replica: str
    queue_wait_s: float


def claim_replica(deployment: "DeploymentRuntime", key: str, tried: set[str] = frozenset()) -> ReplicaRuntime:
    """The replica a try goes to, with its breaker's permission claimed (the half-open probe, if it is one).

    A replica not tried yet comes first; when every allowed one was tried, a retry may go back to one
    (an overloaded single replica, after backoff). Raises EngineUnavailable, not retry-safe, when every
    replica's circuit is open: failing fast is the point of a breaker.
    """
    refused: set[str] = set()
    while True:
        replica = (choose_replica(deployment.replicas, key, tried | refused)
                   or choose_replica(deployment.replicas, key, refused))
        if replica is None:
            wait = min((r.breaker.seconds_until_probe() for r in deployment.replicas), default=1.0)
            exc = EngineUnavailable(f"no replica of {deployment.model} can take the request (circuits open)",
                                    retry_safe=False)
            exc.retry_after_s = max(1, math.ceil(wait))
            raise exc
        if replica.breaker.begin():
            return replica
        refused.add(replica.label)  # its probe was claimed by another request meanwhile


def retry_backoff_s(retry: int) -> float:
    return backoff_s(retry, base_s=settings.TOLLGATE_RETRY_BACKOFF_BASE_MS / 1000.0,
                     cap_s=settings.TOLLGATE_RETRY_BACKOFF_MAX_MS / 1000.0)


class PooledGenerationStream(BatchedGenerationStream):
    """One try of a generation: the pool's admission, one replica's stream, that replica's breaker.

    ``admit()`` must be awaited before iterating (it may raise PoolQueueFull, or EngineUnavailable when
    every circuit is open). It chooses the replica, skipping open circuits and, while another can take
    it, the replicas in ``exclude`` (those an earlier try of the same request failed on). A failure is reported to the
    replica's breaker and raised: whether to try again is the generate stage's decision (an attempt).
    """

    def __init__(self, deployment: DeploymentRuntime, request: GenerationRequest, exclude: frozenset[str] = frozenset()):
        self.deployment = deployment
        self.request = request
        self.exclude = set(exclude)
        self.result: GenerationResult | None = None
        self.replica: ReplicaRuntime | None = None
        self.inner: GenerationStream | None = None
        self.queue_wait_s = 0.0
        self._admitted_at: float | None = None
        self._released = False
        self._judged = False

    @property
    def pool(self) -> "PoolRuntime":
        return self.deployment.pool

    async def admit(self) -> None:
        """Wait for the pool's admission, then claim a replica (EngineUnavailable: every circuit is open)."""
        self.queue_wait_s = await self.deployment.pool.admit_request()
        self._admitted_at = time.perf_counter()
        try:
            self.replica = claim_replica(self.deployment, prefix_key(self.request.messages, self.request.prompt),
                                         self.exclude)
        except EngineUnavailable:
            self._release()
            raise

    def _release(self) -> None:
        if self.replica is not None and not self._judged:
            self._judged = True
            self.replica.breaker.release()  # ended without a verdict (cancelled): the probe is free again
        if self._admitted_at is not None and not self._released:
            self._released = True
            self.deployment.pool.release(time.perf_counter() - self._admitted_at)

    def __del__(self):
        # A response dropped before its body was ever iterated (client gone at once) still frees its slot.
        self._release()

    def _annotate(self, result: GenerationResult | None) -> GenerationResult | None:
        if result is None:
            return None
        engine_queue = float(result.extra.get("queue_wait_s", 0.0))
        result.extra.update(pool=self.deployment.pool.name, replica=self.replica.label if self.replica else "",
                            admission_wait_s=self.queue_wait_s, queue_wait_s=self.queue_wait_s + engine_queue)
        return result

    async def _batches(self) -> AsyncIterator[list[TextDelta]]:
        if self._admitted_at is None:
            await self.admit()
        try:
            replica = self.replica
            self.inner = inner = replica.engine.stream(self.request)
            replica.outstanding += 1
            try:
                async for batch in inner.batches():
                    yield batch
            except EngineRejected:
                self._judge(replica.record_success)  # the replica answered; the request was wrong
                raise
            except EngineError as exc:
                self._judge(functools.partial(replica.record_failure, exc))
                raise
            finally:
                replica.outstanding -= 1
            self._judge(replica.record_success)
            self.result = self._annotate(inner.result)
        finally:
            if self.result is None and self.inner is not None and self.inner.result is not None:
                self.result = self._annotate(self.inner.result)
            self._release()

    def _judge(self, verdict) -> None:
        if not self._judged:
            self._judged = True
            verdict()

    async def cancel(self) -> None:
        if self.inner is not None:
            await self.inner.cancel()
            if self.result is None:
                self.result = self._annotate(self.inner.result)
        self._release()
        if self.result is None:
            self.result = GenerationResult(text="", prompt_tokens=0, completion_tokens=0, finish_reason="cancelled",
                                           extra={"pool": self.deployment.pool.name})


async def open_generation(engine: Engine, request: GenerationRequest,
                          exclude: frozenset[str] = frozenset()) -> GenerationStream:
    """Start one try of a generation; pooled engines admit it first (PoolQueueFull when the queue is full).

    ``exclude``: replicas an earlier try of this request failed on (avoided while another can take it).
    """
    if isinstance(engine, DeploymentRuntime):
        stream = engine.stream(request, exclude)
        await stream.admit()
        return stream
    return engine.stream(request)


# ------------------------------------------------------------------ configuration


@dataclass
class PoolTopology:
    deployments: dict[str, DeploymentRuntime]
    pools: dict[str, PoolRuntime]
    signature: tuple


_topology: PoolTopology | None = None
_loaded_at = 0.0
_topology_lock = threading.Lock()
_health_thread: threading.Thread | None = None


def _configured() -> tuple:
    """The enabled deployments and replicas in the database, as a plain tuple (the topology's signature)."""
    rows = []
    for d in Deployment.objects.filter(enabled=True).select_related("pool").prefetch_related("replicas"):
        p = d.pool
        replicas = tuple(sorted(r.url for r in d.replicas.all() if r.enabled))
        rows.append((d.model, (p.name, p.kind, p.max_in_flight_per_replica, p.max_queue, p.max_batch_wait_ms),
                     replicas))
    return tuple(sorted(rows))


def _default_pool(name: str, kind: str, per_replica: int) -> PoolSettings:
    return PoolSettings(name=name, kind=kind, max_in_flight_per_replica=per_replica,
                        max_queue=settings.TOLLGATE_POOL_MAX_QUEUE, max_batch_wait_ms=settings.TOLLGATE_EMBEDDING_MAX_WAIT_MS)


def _build(signature: tuple) -> PoolTopology:
    pools: dict[str, PoolRuntime] = {}
    deployments: dict[str, DeploymentRuntime] = {}
    by_pool: dict[tuple, list] = {}
    for model, pool_row, urls in signature:
        by_pool.setdefault(pool_row, []).append((model, urls))
    for pool_row, members in by_pool.items():
        config = PoolSettings(*pool_row)
        replicas_total = max(len(urls) for _, urls in members) or 1
        pool = pools[config.name] = PoolRuntime(config, replicas_total)
        for model, urls in members:
            replicas = [_replica(model, url, config) for url in urls]
            replicas = [r for r in replicas if r is not None]
            if replicas:
                deployments[model] = DeploymentRuntime(model, pool, replicas)
    local = in_process_engine()
    if local is not None:
        missing = [m for m in local.model_names() if m not in deployments]
        if missing:
            pool = pools.get(DEFAULT_POOL) or PoolRuntime(
                _default_pool(DEFAULT_POOL, "interactive", settings.TOLLGATE_CPU_MAX_NUM_SEQS), 1)
            pools[pool.name] = pool
            replica = _local_replica(local)
            for m in missing:
                deployments[m] = DeploymentRuntime(m, pool, [replica])
    if settings.TOLLGATE_EMBEDDINGS_IN_PROCESS:
        from .engines.embeddings import EMBEDDING_MODEL

        if EMBEDDING_MODEL not in deployments:
            pool = pools.get(EMBEDDING_POOL) or PoolRuntime(
                _default_pool(EMBEDDING_POOL, "embedding", settings.TOLLGATE_EMBEDDING_MAX_BATCH), 1)
            pools[pool.name] = pool
            deployments[EMBEDDING_MODEL] = DeploymentRuntime(EMBEDDING_MODEL, pool, [_local_embedder()])
    return PoolTopology(deployments=deployments, pools=pools, signature=signature)


def _local_replica(local: Engine) -> ReplicaRuntime:
    """The local engine as a replica: in this process, or the CPU engine worker that stands in for it
    (a remote replica like any other: health-checked, taken out when it does not answer)."""
    url = cpu_worker_url()
    return ReplicaRuntime(url, local, url) if url else ReplicaRuntime(IN_PROCESS, local)


def _local_embedder() -> ReplicaRuntime:
    from .engines.embeddings import EMBEDDING_MODEL

    url = cpu_worker_url()
    if url:  # the CPU engine worker serves all-minilm-l6-v2 too (serve starts it with --embeddings)
        return ReplicaRuntime(url, RemoteEmbedder(url, EMBEDDING_MODEL), url)
    from .engines.embeddings import get_embedder  # torch: only where embeddings run here

    return ReplicaRuntime(IN_PROCESS, get_embedder())


def _replica(model: str, url: str, pool: PoolSettings) -> ReplicaRuntime | None:
    if pool.kind == "embedding":
        return ReplicaRuntime(url, RemoteEmbedder(url, model), url) if url else _local_embedder()
    if not url:
        local = in_process_engine()
        if local is None or model not in local.model_names():
            logger.warning("deployment %s lists the in-process engine, which does not serve it", model)
            return None
        return _local_replica(local)
    return ReplicaRuntime(url, RemoteEngine(url, [model], connect_timeout=settings.TOLLGATE_ENGINE_CONNECT_TIMEOUT_S,
                                            read_timeout=settings.TOLLGATE_ENGINE_READ_TIMEOUT_S), url)


def pool_topology() -> PoolTopology:
    """The current pools and deployments (re-read from the database every TOLLGATE_POOL_CONFIG_TTL_S)."""
    global _topology, _loaded_at
    now = time.monotonic()
    if _topology is not None and now - _loaded_at < settings.TOLLGATE_POOL_CONFIG_TTL_S:
        return _topology
    loading("pool topology")
    with _topology_lock:
        if _topology is None or time.monotonic() - _loaded_at >= settings.TOLLGATE_POOL_CONFIG_TTL_S:
            signature = _configured()
            if _topology is None or signature != _topology.signature:
                _topology = _build(signature)
                if any(r.url for d in _topology.deployments.values() for r in d.replicas):
                    _start_health_checks()
            _loaded_at = time.monotonic()
    return _topology


def reload_pools() -> PoolTopology:
    """Re-read the configuration now (tests, admin changes)."""
    global _loaded_at
    _loaded_at = 0.0
    return pool_topology()


def deployment_for_model(model: str) -> DeploymentRuntime | None:
    return pool_topology().deployments.get(model)


def engine_for_model(model_name: str) -> Engine | None:
    """The model's deployment (its pool and replicas) as one generating Engine, or None if nothing serves it."""
    deployment = deployment_for_model(model_name)
    if deployment is None or deployment.pool.config.kind == "embedding":
        return None  # embedding models are served by /v1/embeddings only
    return deployment


@dataclass(frozen=True)
class ReplicaState:
    """One replica as this web process sees it now (the GPU dashboard's replica table)."""

    pool: str
    model: str
    replica: str
    healthy: bool
    circuit: str  # closed, half_open, open
    outstanding: int
    circuit_opened: int
    probe_in_s: float


def replica_states() -> list[ReplicaState]:
    states = []
    for model, deployment in sorted(pool_topology().deployments.items()):
        for r in deployment.replicas:
            states.append(ReplicaState(pool=deployment.pool.name, model=model, replica=r.label, healthy=r.healthy,
                                       circuit=r.breaker.state, outstanding=r.outstanding,
                                       circuit_opened=r.breaker.times_opened,
                                       probe_in_s=r.breaker.seconds_until_probe()))
    return states


@dataclass(frozen=True)
class ReplicaSnapshot:
    label: str
    url: str  # blank: the in-process engine of this process
    healthy: bool
    outstanding: int
    engine: dict  # ReplicaRuntime.engine_stats()


@dataclass(frozen=True)
class PoolSnapshot:
    """One pool as this web process sees it now: its admission queue and its distinct replicas."""

    name: str
    kind: str
    max_in_flight_per_replica: int
    in_flight: int
    waiting: int
    admitted_total: int
    replicas: tuple[ReplicaSnapshot, ...]


def pool_snapshots() -> list[PoolSnapshot]:
    """Every pool's admission state and replicas (each replica once, though several models share it)."""
    topology = pool_topology()
    # Keyed by label: deployments of one pool on the same worker (or the in-process engine) share it.
    replicas_of: dict[str, dict[str, ReplicaRuntime]] = {name: {} for name in topology.pools}
    for deployment in topology.deployments.values():
        for r in deployment.replicas:
            replicas_of.setdefault(deployment.pool.name, {}).setdefault(r.label, r)
    out = []
    for name, pool in sorted(topology.pools.items()):
        reps = sorted(replicas_of.get(name, {}).values(), key=lambda r: r.label)
        out.append(PoolSnapshot(
            name=name, kind=pool.config.kind, max_in_flight_per_replica=pool.config.max_in_flight_per_replica,
            in_flight=pool.in_flight, waiting=pool.waiting, admitted_total=pool.admitted_total,
            replicas=tuple(ReplicaSnapshot(label=r.label, url=r.url, healthy=r.healthy, outstanding=r.outstanding,
                                           engine=r.engine_stats()) for r in reps)))
    return out


def served_model_names() -> set[str]:
    return set(pool_topology().deployments)


# ------------------------------------------------------------------ health


async def probe_replicas(topology: PoolTopology | None = None) -> None:
    """Probe every remote replica's /health (and scrape /metrics); take dead ones out, put live ones back."""
    topology = topology or _topology
    if topology is None:
        return
    seen: set[int] = set()
    replicas = [r for d in topology.deployments.values() for r in d.replicas
                if r.url and not (id(r) in seen or seen.add(id(r)))]

    async def probe(replica: ReplicaRuntime) -> None:
        engine = replica.engine
        if await engine.check_health():
            replica.mark_up()
            try:
                replica.metrics = await engine.scrape_metrics()
            except Exception:  # metrics are advisory
                replica.metrics = {}
        else:
            replica.mark_down("health check failed")
        replica.publish_state()  # an open circuit turns half-open with time, not with a request

    await asyncio.gather(*(probe(r) for r in replicas), return_exceptions=True)


def _start_health_checks() -> None:
    global _health_thread
    if _health_thread is not None and _health_thread.is_alive():
        return

    def run() -> None:
        async def loop() -> None:
            while True:
                try:
                    await probe_replicas()
                except Exception:
                    logger.exception("replica health check failed")
                await asyncio.sleep(settings.TOLLGATE_HEALTH_CHECK_INTERVAL_S)

        asyncio.run(loop())

    _health_thread = threading.Thread(target=run, name="tollgate-replica-health", daemon=True)
    _health_thread.start()
