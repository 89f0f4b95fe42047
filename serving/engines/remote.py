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

HTTP clients are pooled per event loop (httpx clients cannot cross loops).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .base import (
    ChatMessage,
    Engine,
    EngineError,
    EngineUnavailable,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    TextDelta,
)

# One connection pool per event loop (and timeout pair); a loop's clients go away with it.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[float, float], httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary())
_clients_lock = threading.Lock()


def http_client(connect_timeout: float, read_timeout: float) -> httpx.AsyncClient:
    """The pooled async client for the running event loop."""
    loop = asyncio.get_running_loop()
    key = (connect_timeout, read_timeout)
    client = _clients.get(loop, {}).get(key)
    if client is None or client.is_closed:
        with _clients_lock:
            per_loop = _clients.setdefault(loop, {})
            client = per_loop.get(key)
            if client is None or client.is_closed:
                client = httpx.AsyncClient(
                    timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
                    limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
                )
                per_loop[key] = client
    return client


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
    }
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        key = wanted.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


class RemoteEngine(Engine):
    """One worker URL serving ``models``."""

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
        from .cpu.engine import get_tokenizer

        return len(get_tokenizer().encode_chat(messages))

    def stream(self, request: GenerationRequest) -> "RemoteGenerationStream":
        return RemoteGenerationStream(self, request)

    def client(self) -> httpx.AsyncClient:
        return http_client(self.connect_timeout, self.read_timeout)

    async def check_health(self) -> bool:
        try:
            response = await self.client().get(f"{self.base_url}/health", timeout=self.connect_timeout)
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    async def scrape_metrics(self) -> dict[str, float]:
        response = await self.client().get(f"{self.base_url}/metrics", timeout=self.connect_timeout)
        response.raise_for_status()
        self.last_metrics = read_engine_metrics(response.text)
        return self.last_metrics

    def request_body(self, request: GenerationRequest) -> tuple[str, dict]:
        sp = request.sampling
        body: dict = {"model": request.model, "max_tokens": sp.max_tokens, "temperature": sp.temperature,
                      "top_p": sp.top_p, "stream": True,
                      "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        if sp.seed is not None:
            body["seed"] = sp.seed
        if sp.stop:
            body["stop"] = list(sp.stop)
        if request.prompt is not None:
            body["prompt"] = request.prompt
            return "/v1/completions", body
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        return "/v1/chat/completions", body


class RemoteGenerationStream(GenerationStream):
    """Streams one generation from a worker; closing it closes the HTTP response (the worker cancels)."""

    def __init__(self, engine: RemoteEngine, request: GenerationRequest):
        self.engine = engine
        self.request = request
        self.result: GenerationResult | None = None
        self.received_first_token = False
        self._usage: dict = {}
        self._report: dict = {}
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._started_at = 0.0
        self._first_at: float | None = None
        self._response: httpx.Response | None = None
        self._cancelled = False

    async def _iterate(self) -> AsyncIterator[TextDelta]:
        if self._cancelled:
            return
        path, body = self.engine.request_body(self.request)
        self._started_at = time.perf_counter()
        client = self.engine.client()
        try:
            request = client.build_request("POST", self.engine.base_url + path, json=body)
            self._response = response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise EngineUnavailable(f"worker {self.engine.base_url} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"worker {self.engine.base_url} unreachable: {exc!r}") from exc
        ended = False
        try:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:500]
                error = EngineUnavailable if response.status_code >= 500 else EngineError
                raise error(f"worker {self.engine.base_url} answered {response.status_code}: {detail}")
            produced = 0
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise EngineError(f"worker error: {chunk['error'].get('message')}")
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
                    total = self._usage.get("completion_tokens", produced)
                    count = max(0, total - produced)
                    if text or count:
                        if self._first_at is None:
                            self._first_at = time.perf_counter()
                        self.received_first_token = True
                        produced = max(produced, total)
                        self._parts.append(text)
                        yield TextDelta(text, count)
            ended = True
            self.result = self._build_result(self._finish_reason or "stop")
        except httpx.HTTPError as exc:
            raise EngineError(f"worker {self.engine.base_url} failed mid-stream: {exc!r}") from exc
        finally:
            await response.aclose()
            if not ended and self.result is None:
                self.result = self._build_result("cancelled")

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
        )

    async def cancel(self) -> None:
        self._cancelled = True
        if self._response is not None:
            await self._response.aclose()
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

    def client(self) -> httpx.AsyncClient:
        return http_client(self.connect_timeout, self.read_timeout)

    check_health = RemoteEngine.check_health
    scrape_metrics = RemoteEngine.scrape_metrics

    async def embed(self, texts: list[str]):
        from .embeddings import EmbeddingResult

        try:
            response = await self.client().post(f"{self.base_url}/v1/embeddings",
                                                json={"model": self.model_name, "input": texts})
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"worker {self.base_url} unreachable: {exc!r}") from exc
        if response.status_code != 200:
            error = EngineUnavailable if response.status_code >= 500 else EngineError
            raise error(f"worker {self.base_url} answered {response.status_code}: {response.text[:500]}")
        body = response.json()
        report = body.get("tollgate") or {}
        data = sorted(body["data"], key=lambda d: d["index"])
        return EmbeddingResult(vectors=[d["embedding"] for d in data],
                               prompt_tokens=int(body["usage"]["prompt_tokens"]),
                               engine_seconds=float(report.get("engine_seconds", 0.0)),
                               queue_seconds=float(report.get("queue_seconds", 0.0)))
