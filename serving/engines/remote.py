"""A remote engine worker (vLLM or Tollgate's CPU worker) over its OpenAI-compatible HTTP API.

It implements the same :class:`~serving.engines.base.Engine` interface as the
in-process CPU engine. Generation always streams from the worker with
``stream_options = {include_usage, continuous_usage_stats}`` (a vLLM
extension), so every chunk carries the running token count: when the gateway
closes the stream early (its client left), closing the HTTP response makes the
worker cancel the request, and the tokens already sent are known exactly.

Engine-seconds: Tollgate's CPU worker reports the request's share of each step
it took part in (the ``tollgate`` object of the final chunk). vLLM does not
report it; for vLLM the adapter charges the request's decode wall time
divided by the number of requests the worker was running at the last scrape
(an estimate, marked ``engine_seconds_estimated`` in the result).

HTTP sessions (aiohttp) are pooled per event loop, since a session cannot
cross loops. aiohttp rather than httpx: streaming one generation through
httpx cost 0.61 ms per request against 0.17 ms through aiohttp, measured
against the same local worker, and the gateway does this on every request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator

import aiohttp
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families
from pydantic_core import from_json, to_json

from ..protocol import token_logprobs_from_wire
from .base import (
    BatchedGenerationStream,
    ChatMessage,
    Engine,
    EngineError,
    EngineRejected,
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    TextDelta,
)

# One connection pool per event loop (and timeout pair); a loop's sessions go away with it.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[float, float], aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary())
_sessions_lock = threading.Lock()
# SSE lines longer than aiohttp's default 64 KiB read buffer would fail; a generation chunk can be large.
_READ_BUFSIZE = 1 << 20
HTTP_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
HEALTH_READ_TIMEOUT_S = 30.0
RETRY_SAFE_STATUSES = frozenset({429, 502, 503, 504})
_JSON = {"Content-Type": "application/json"}


def http_session(connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    """The pooled HTTP session for the running event loop."""
    loop = asyncio.get_running_loop()
    key = (connect_timeout, read_timeout)
    session = _sessions.get(loop, {}).get(key)
    if session is None or session.closed:
        with _sessions_lock:
            per_loop = _sessions.setdefault(loop, {})
            session = per_loop.get(key)
            if session is None or session.closed:
                session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout),
                    # An idle connection is dropped before the worker drops it (vLLM's server keeps one
                    # 5 s): a request written on a connection the worker is closing is lost ("Can not
                    # write request body"), and a burst of those would open the replica's circuit.
                    connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0,
                                                   keepalive_timeout=settings.TOLLGATE_ENGINE_KEEP_ALIVE_S),
                    read_bufsize=_READ_BUFSIZE,
                    # Every tenant's requests share these sessions: a cookie one answer set (a worker, a proxy
                    # in front of it) would go out with everybody's next request. Not keeping any also
                    # spares a jar lookup per request.
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
                per_loop[key] = session
    return session


async def _get_text(session: aiohttp.ClientSession, url: str, connect_timeout_s: float) -> tuple[int, str]:
    # A worker that does not accept the connection is dead; one that is slow to answer is busy. Only the
    # first takes a replica out: under load a short answer timeout would remove the replicas doing the work.
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=HEALTH_READ_TIMEOUT_S)
    async with session.get(url, timeout=timeout) as response:
        return response.status, await response.text()


def read_engine_metrics(text: str) -> dict[str, float]:
    """vLLM gauges and counters from a /metrics page, summed over label sets (histograms skipped)."""
    wanted = {
        "vllm:num_requests_running": "running",
        "vllm:num_requests_waiting": "waiting",
        "vllm:kv_cache_usage_perc": "kv_cache_usage",
        "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # vLLM before v1
        "vllm:prefix_cache_queries": "prefix_cache_queries",
        "vllm:prefix_cache_hits": "prefix_cache_hits",
        "vllm:prompt_tokens": "prompt_tokens",
        "vllm:generation_tokens": "generation_tokens",
        # Tollgate's CPU worker also says how long its forward steps took (vLLM does not): the busy share.
        "tollgate:engine_busy_seconds": "busy_seconds",
    }
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        # prometheus-client's parser does not join a counter's `_total` samples to its TYPE line when the
        # name has a colon (vLLM's do): they come as a family of their own, named with the suffix.
        key = wanted.get(family.name) or wanted.get(family.name.removesuffix("_total"))
        if key is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def worker_error(base_url: str, status: int, body: bytes) -> EngineError:
    """The exception for a worker's non-200 answer: its 400s are the caller's (EngineRejected, with the
    parameter it named), 5xx an outage (EngineUnavailable), anything else an engine failure."""
    detail = body.decode(errors="replace")[:500]
    if status == 400:
        try:
            error = json.loads(body)["error"]
            return EngineRejected(f"The engine refused the request: {error['message']}", param=error.get("param"))
        except (ValueError, KeyError, TypeError):
            return EngineRejected(f"The engine refused the request: {detail}")
    if status >= 500 or status == 429:
        # Overloaded or restarting (429, 502, 503, 504) is the worker saying "not now": nothing ran, so
        # another try may succeed. A 500 is a failure of the request itself there and is not retried.
        return EngineUnavailable(f"worker {base_url} answered {status}: {detail}",
                                 retry_safe=status in RETRY_SAFE_STATUSES)
    return EngineError(f"worker {base_url} answered {status}: {detail}")


def _json_bytes(body: dict) -> bytes:
    """``body`` as JSON, by pydantic-core (aiohttp's ``json=`` runs the stdlib's encoder: 5.5 µs against
    1.2 on a two-message request here); a text it will not encode (a lone surrogate: none can come in
    through the API's JSON) goes through the stdlib's, which escapes it."""
    try:
        return to_json(body)
    except ValueError:
        return json.dumps(body).encode()


class RemoteEngine(Engine):
    """One worker URL serving ``models``."""

    # What vLLM's OpenAI server takes and this adapter passes on. (n and tools change the response's shape,
    # which the gateway does not carry yet, so they are refused before this.)
    supported_parameters = frozenset({"frequency_penalty", "presence_penalty", "logit_bias", "response_format",
                                      "logprobs", "top_logprobs", "messages.name"})

    def __init__(self, base_url: str, models: list[str], *, context_windows: dict[str, int] | None = None,
                 connect_timeout: float = 2.0, read_timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self._models = list(models)
        self._windows = context_windows or {}
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.last_metrics: dict[str, float] = {}

    def model_names(self) -> list[str]:
        return list(self._models)

    def context_window(self, model: str) -> int:
        return self._windows.get(model, 2048)

    def count_prompt_tokens(self, model: str, messages: tuple[ChatMessage, ...]) -> int:
        # The gateway's pre-check of the context window, with the CPU engine's tokenizer (exact for the
        # tollgate-* family). What is billed is what the worker reports in `usage`.
        from .cpu.tokenizer import get_tokenizer

        return get_tokenizer().count_chat(messages)

    def stream(self, request: GenerationRequest) -> "RemoteGenerationStream":
        return RemoteGenerationStream(self, request)

    def client(self) -> aiohttp.ClientSession:
        return http_session(self.connect_timeout, self.read_timeout)

    async def check_health(self) -> bool:
        try:
            status, _ = await _get_text(self.client(), f"{self.base_url}/health", self.connect_timeout)
            return status == 200
        except HTTP_ERRORS:
            return False

    async def scrape_metrics(self) -> dict[str, float]:
        try:
            status, text = await _get_text(self.client(), f"{self.base_url}/metrics", self.connect_timeout)
        except HTTP_ERRORS as exc:
            raise EngineUnavailable(f"worker {self.base_url} metrics unreachable: {exc!r}") from exc
        if status != 200:
            raise EngineUnavailable(f"worker {self.base_url} metrics answered {status}")
        self.last_metrics = read_engine_metrics(text)
        return self.last_metrics

    def request_body(self, request: GenerationRequest) -> tuple[str, dict]:
        sp = request.sampling
        temperature, top_p = sp.temperature, sp.top_p
        if top_p <= 0.0:
            # OpenAI's top_p 0 keeps only the most likely token; vLLM refuses top_p 0 and spells that
            # as temperature 0 (greedy).
            temperature, top_p = 0.0, 1.0
        body: dict = {"model": request.model, "max_tokens": sp.max_tokens, "temperature": temperature,
                      "top_p": top_p, "stream": True,
                      "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        if sp.seed is not None:
            body["seed"] = sp.seed
        if sp.stop:
            body["stop"] = list(sp.stop)
        if sp.frequency_penalty:
            body["frequency_penalty"] = sp.frequency_penalty
        if sp.presence_penalty:
            body["presence_penalty"] = sp.presence_penalty
        if sp.logit_bias:
            body["logit_bias"] = dict(sp.logit_bias)
        if sp.response_format is not None:
            body["response_format"] = sp.response_format
        if sp.logprobs and request.prompt is None:
            body["logprobs"] = True
            if sp.top_logprobs:
                body["top_logprobs"] = sp.top_logprobs
        if request.prompt is not None:
            body["prompt"] = request.prompt
            return "/v1/completions", body
        body["messages"] = [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
                            for m in request.messages]
        return "/v1/chat/completions", body


class RemoteGenerationStream(BatchedGenerationStream):
    """Streams one generation from a worker; closing it closes the HTTP response (the worker cancels)."""

    def __init__(self, engine: RemoteEngine, request: GenerationRequest):
        self.engine = engine
        self.request = request
        self.result: GenerationResult | None = None
        self.received_first_token = False
        self._usage: dict = {}
        self._report: dict = {}
        self._parts: list[str] = []
        self._logprobs: list | None = [] if request.sampling.logprobs else None
        self._finish_reason: str | None = None
        self._produced = 0  # completion tokens passed on so far
        self._worker_error: EngineError | None = None
        self._started_at = 0.0
        self._first_at: float | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._cancelled = False

    async def _batches(self) -> AsyncIterator[list[TextDelta]]:
        if self._cancelled:
            return
        path, body = self.engine.request_body(self.request)
        self._started_at = time.perf_counter()
        session = self.engine.client()
        try:
            self._response = response = await session.post(self.engine.base_url + path, data=_json_bytes(body),
                                                           headers=_JSON)
        except aiohttp.ConnectionTimeoutError as exc:  # never connected: nothing ran there
            raise EngineUnavailable(f"worker {self.engine.base_url} did not accept a connection: {exc!r}",
                                    unreachable=True) from exc
        except asyncio.TimeoutError as exc:
            # Connected, but no answer in time: the worker may still be working on it, so no retry.
            raise EngineUnavailable(f"worker {self.engine.base_url} timed out: {exc!r}", retry_safe=False) from exc
        except aiohttp.ClientConnectorError as exc:  # refused, no route: the worker is not there
            raise EngineUnavailable(f"worker {self.engine.base_url} unreachable: {exc!r}", unreachable=True) from exc
        except aiohttp.ClientError as exc:  # reset or closed before any answer
            raise EngineUnavailable(f"worker {self.engine.base_url} dropped the request: {exc!r}") from exc
        ended = False
        try:
            if response.status != 200:
                raise worker_error(self.engine.base_url, response.status, await response.read())
            # Everything the worker has sent so far, in one read (readany waits only when nothing is
            # there): the chunks of one read travel on as one batch, so a fast worker's burst costs the
            # gateway one pass down the flow and one write to its client, not one per token.
            content = response.content
            partial = b""
            while data := await content.readany():
                lines = (partial + data).split(b"\n") if partial else data.split(b"\n")
                partial = lines.pop()  # after the last newline: a line not yet complete (b"" if none)
                batch = self._deltas(lines)
                if batch:
                    yield batch
                if self._worker_error is not None:
                    raise self._worker_error
            # (Read on to the end of the body, past [DONE], rather than stop there: a response closed
            # before its end cannot go back to the connection pool, and every request would then open
            # a new connection to the worker.)
            batch = self._deltas([partial])
            if batch:
                yield batch
            if self._worker_error is not None:
                raise self._worker_error
            ended = True
            self.result = self._build_result(self._finish_reason or "stop")
        except HTTP_ERRORS as exc:
            if self._cancelled:  # we closed the connection ourselves (the caller left, or a deadline)
                return
            raise self._failure(exc) from exc
        finally:
            if ended:
                response.release()  # read to the end: the connection goes back to the pool
            else:
                response.close()  # closing the connection makes the worker cancel the request
            if not ended and self.result is None:
                self.result = self._build_result("cancelled")

    def _deltas(self, lines: list[bytes]) -> list[TextDelta]:
        """The text deltas in some SSE lines (usage, engine report and finish reason noted on the way).

        An error event stops there, kept in ``_worker_error``: the deltas before it still go out first."""
        out: list[TextDelta] = []
        for raw_line in lines:
            if not raw_line.startswith(b"data:"):
                continue
            data = raw_line[5:].strip()
            if data == b"[DONE]":
                continue
            # pydantic-core's parser: a quarter of the stdlib's time on a vLLM chunk, and this runs per token.
            chunk = from_json(data, cache_strings="keys")
            if "error" in chunk:
                self._worker_error = EngineError(f"worker error: {chunk['error'].get('message')}")
                break
            if chunk.get("usage"):
                self._usage = chunk["usage"]
            if chunk.get("tollgate"):
                self._report = chunk["tollgate"]
            for choice in chunk.get("choices") or ():
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content") or ""
                if choice.get("finish_reason"):
                    self._finish_reason = choice["finish_reason"]
                total = self._usage.get("completion_tokens", self._produced)
                count = max(0, total - self._produced)
                logprobs = None
                if self._logprobs is not None and choice.get("logprobs"):
                    logprobs = token_logprobs_from_wire(choice["logprobs"].get("content"))
                    self._logprobs.extend(logprobs)
                if text or count or logprobs:
                    if self._first_at is None:
                        self._first_at = time.perf_counter()
                    self.received_first_token = True
                    self._produced = max(self._produced, total)
                    self._parts.append(text)
                    out.append(TextDelta(text, count, logprobs))
        return out

    def _failure(self, exc: BaseException) -> EngineError:
        """What a connection failure while reading the answer means for the request."""
        url = self.engine.base_url
        if isinstance(exc, asyncio.TimeoutError):  # (aiohttp's read timeout is a connection error too)
            return EngineError(f"worker {url} stopped answering: {exc!r}")
        if isinstance(exc, aiohttp.ClientConnectionError) and not self.received_first_token:
            # Reset before the first token: the caller has seen nothing yet, another try is safe.
            return EngineUnavailable(f"worker {url} dropped the connection: {exc!r}")
        return EngineError(f"worker {url} failed mid-stream: {exc!r}")

    def _build_result(self, finish_reason: str) -> GenerationResult:
        usage = self._usage
        elapsed = time.perf_counter() - self._started_at if self._started_at else 0.0
        ttft = self._report.get("time_to_first_token_seconds")
        if ttft is None and self._first_at is not None:
            ttft = self._first_at - self._started_at
        extra = {"model": self.request.model, "replica_url": self.engine.base_url}
        if "queue_seconds" in self._report:
            extra["queue_seconds"] = extra["queue_wait_s"] = float(self._report["queue_seconds"])
        engine_seconds = self._report.get("engine_seconds")
        if engine_seconds is None:
            running = max(1.0, self.engine.last_metrics.get("running", 1.0))
            engine_seconds = elapsed / running
            extra["engine_seconds_estimated"] = True
        return GenerationResult(
            text="".join(self._parts),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=finish_reason,
            cached_prompt_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            time_to_first_token_s=ttft,
            engine_seconds=float(engine_seconds),
            extra=extra,
            logprobs=self._logprobs,
        )

    async def cancel(self) -> None:
        self._cancelled = True
        if self._response is not None:
            self._response.close()
        if self.result is None:
            self.result = self._build_result("cancelled")


class RemoteEmbedder:
    """A worker's /v1/embeddings (vLLM or Tollgate's worker), used by the embedding pool."""

    def __init__(self, base_url: str, model: str, *, connect_timeout: float = 2.0, read_timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.last_metrics: dict[str, float] = {}

    def client(self) -> aiohttp.ClientSession:
        return http_session(self.connect_timeout, self.read_timeout)

    check_health = RemoteEngine.check_health
    scrape_metrics = RemoteEngine.scrape_metrics

    async def embed(self, texts: list[str]):
        from .embeddings import EmbeddingResult

        try:
            async with self.client().post(f"{self.base_url}/v1/embeddings",
                                          json={"model": self.model_name, "input": texts}) as response:
                status, text = response.status, await response.text()
        except HTTP_ERRORS as exc:
            raise EngineUnavailable(f"worker {self.base_url} unreachable: {exc!r}") from exc
        if status != 200:
            raise worker_error(self.base_url, status, text.encode())
        body = json.loads(text)
        report = body.get("tollgate") or {}
        data = sorted(body["data"], key=lambda d: d["index"])
        return EmbeddingResult(vectors=[d["embedding"] for d in data],
                               prompt_tokens=int(body["usage"]["prompt_tokens"]),
                               engine_seconds=float(report.get("engine_seconds", 0.0)),
                               queue_seconds=float(report.get("queue_seconds", 0.0)))
