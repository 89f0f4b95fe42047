"""An engine worker: any in-process Engine behind the HTTP API that `vllm serve` exposes.

Routes (the subset of vLLM's OpenAI-compatible server the gateway uses):

* ``GET /health`` (200 while the engine can take work), ``GET /v1/models``
* ``POST /v1/chat/completions`` and ``POST /v1/completions``, streaming or not,
  with ``stream_options.include_usage`` and vLLM's ``continuous_usage_stats``
  (usage in every chunk, so a client that leaves mid-stream knows how many
  tokens it was sent)
* ``POST /v1/embeddings`` when the worker hosts an embedding model
* ``GET /metrics``: Prometheus text with vLLM's metric names
  (``vllm:num_requests_running``, ``vllm:prefix_cache_hits``, ...)

Besides the OpenAI fields, final responses carry a ``tollgate`` object with
what the engine measured for the request (engine-seconds, queue and first-token
times). vLLM does not send it; the remote adapter copes without it.

A client that disconnects mid-stream cancels the generation on the engine.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .base import ChatMessage, Engine, EngineError, GenerationRequest, GenerationResult, PromptTooLong, SamplingParams

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)


class WorkerRequestError(Exception):
    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.param = message, status, code, param

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


class _EngineCollector:
    """Reads the engine's counters at scrape time and writes them under vLLM's names."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        stats = self.engine.stats() if hasattr(self.engine, "stats") else {"models": {}}
        models = stats.get("models", {})
        running = GaugeMetricFamily("vllm:num_requests_running", "Number of requests in model execution batches.",
                                    labels=["model_name"])
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                                    labels=["model_name"])
        kv = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                               labels=["model_name"])
        queries = CounterMetricFamily("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in terms of number of queried tokens.",
                                      labels=["model_name"])
        hits = CounterMetricFamily("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                                   labels=["model_name"])
        prompt = CounterMetricFamily("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     labels=["model_name"])
        generation = CounterMetricFamily("vllm:generation_tokens", "Number of generation tokens processed.",
                                         labels=["model_name"])
        busy = CounterMetricFamily("tollgate:engine_busy_seconds", "Wall time of all forward steps.",
                                   labels=["model_name"])
        for name, m in models.items():
            window = max(1, getattr(self.engine, "max_num_seqs", 1)) * self.engine.context_window(name)
            running.add_metric([name], m.get("running", 0))
            waiting.add_metric([name], m.get("waiting", 0))
            kv.add_metric([name], min(1.0, m.get("kv_cache_tokens", 0) / window))
            queries.add_metric([name], m.get("prefix_cache_queries", 0))
            hits.add_metric([name], m.get("prefix_cache_hits", 0))
            prompt.add_metric([name], m.get("prompt_tokens", 0))
            generation.add_metric([name], m.get("generation_tokens", 0))
        busy.add_metric(["all"], stats.get("busy_seconds", 0.0))
        return [running, waiting, kv, queries, hits, prompt, generation, busy]


class WorkerMetrics:
    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        labels = ["model_name"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              labels, registry=self.registry, buckets=LATENCY_BUCKETS)
        self.tpot = Histogram("vllm:time_per_output_token_seconds",
                              "Histogram of time per output token in seconds.", labels, registry=self.registry,
                              buckets=LATENCY_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             labels, registry=self.registry, buckets=LATENCY_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency.",
                             labels, registry=self.registry, buckets=LATENCY_BUCKETS)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Histogram of time spent waiting in the queue.",
                               labels, registry=self.registry, buckets=LATENCY_BUCKETS)

    def observe(self, model: str, result: GenerationResult, total_s: float) -> None:
        if result.time_to_first_token_s is not None:
            self.ttft.labels(model).observe(result.time_to_first_token_s)
            if result.completion_tokens > 1:
                per_token = (total_s - result.time_to_first_token_s) / (result.completion_tokens - 1)
                self.tpot.labels(model).observe(per_token)
                self.itl.labels(model).observe(per_token)
        self.e2e.labels(model).observe(total_s)
        if "queue_seconds" in result.extra:
            self.queue.labels(model).observe(result.extra["queue_seconds"])

    def render(self) -> bytes:
        return generate_latest(self.registry)


def engine_report(result: GenerationResult | None) -> dict:
    """The ``tollgate`` object: what the engine measured for one request."""
    if result is None:
        return {}
    return {
        "engine_seconds": result.engine_seconds,
        "queue_seconds": result.extra.get("queue_seconds", 0.0),
        "time_to_first_token_seconds": result.time_to_first_token_s,
    }


def usage_of(result: GenerationResult | None, prompt_tokens: int, completion_tokens: int) -> dict:
    cached = result.cached_prompt_tokens if result is not None else 0
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise WorkerRequestError("message content must be a string or an array of text parts", param="messages")


def _sampling(body: dict) -> SamplingParams:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    try:
        return SamplingParams(max_tokens=int(max_tokens), temperature=float(body.get("temperature", 1.0) or 0.0),
                              top_p=float(body.get("top_p", 1.0) or 1.0), seed=body.get("seed"), stop=tuple(stop))
    except (TypeError, ValueError) as exc:
        raise WorkerRequestError(f"invalid sampling parameters: {exc}")


class _SSEResponse:
    """Sends chunks as server-sent events; a client disconnect cancels the producer (and so the generation)."""

    def __init__(self, chunks):
        self.chunks = chunks

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})

        async def pump():
            async for chunk in self.chunks:
                data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

        async def wait_for_disconnect():
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(wait_for_disconnect())
        try:
            await asyncio.wait({pumping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, watching):
                if not task.done():
                    task.cancel()
            await asyncio.gather(pumping, watching, return_exceptions=True)
            await self.chunks.aclose()


def build_worker_app(engine: Engine, embedder=None, served_name: str | None = None) -> Starlette:
    """The worker's ASGI app. ``embedder`` (optional) serves /v1/embeddings."""
    metrics = WorkerMetrics(engine)
    created = int(time.time())

    def model_ids() -> list[str]:
        names = list(engine.model_names()) if engine is not None else []
        if embedder is not None:
            names.append(embedder.model_name)
        return names

    async def health(request: Request):
        return Response(status_code=200)

    async def models(request: Request):
        data = [{"id": m, "object": "model", "created": created, "owned_by": "tollgate",
                 "root": m, "parent": None} for m in model_ids()]
        return JSONResponse({"object": "list", "data": data})

    async def prometheus(request: Request):
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def read_json(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise WorkerRequestError(f"invalid JSON body: {exc}")
        if not isinstance(body, dict):
            raise WorkerRequestError("the body must be a JSON object")
        return body

    def generation_request(body: dict, chat: bool) -> GenerationRequest:
        model = body.get("model")
        if engine is None or model not in engine.model_names():
            raise WorkerRequestError(f"The model `{model}` does not exist.", status=404, code="model_not_found",
                                     param="model")
        if chat:
            raw = body.get("messages")
            if not isinstance(raw, list) or not raw:
                raise WorkerRequestError("'messages' must be a non-empty array", param="messages")
            messages = tuple(ChatMessage(str(m.get("role", "user")), _content_text(m.get("content"))) for m in raw)
            prompt = None
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise WorkerRequestError("'prompt' must be a string", param="prompt")
            messages = ()
        return GenerationRequest(request_id=uuid.uuid4().hex, model=model, messages=messages,
                                 sampling=_sampling(body), prompt=prompt)

    async def generate(request: Request, chat: bool):
        try:
            body = await read_json(request)
            gen = generation_request(body, chat)
            stream = engine.stream(gen)
        except WorkerRequestError as exc:
            return exc.response()
        except PromptTooLong as exc:
            return WorkerRequestError(str(exc), code="context_length_exceeded", param="messages").response()
        except (EngineError, ValueError) as exc:
            return WorkerRequestError(str(exc), status=400 if isinstance(exc, ValueError) else 503).response()
        started = time.perf_counter()
        kind = "chat.completion" if chat else "text_completion"
        prefix = "chatcmpl-" if chat else "cmpl-"
        rid = prefix + gen.request_id
        created_at = int(time.time())
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return _SSEResponse(_stream_chunks(stream, gen, chat, rid, created_at, started,
                                               bool(options.get("include_usage")),
                                               bool(options.get("continuous_usage_stats"))))
        parts = []
        try:
            async for delta in stream:
                parts.append(delta.text)
        except EngineError as exc:
            return WorkerRequestError(f"the engine failed: {exc}", status=503).response()
        result = stream.result
        metrics.observe(gen.model, result, time.perf_counter() - started)
        text = "".join(parts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                   "finish_reason": result.finish_reason} if chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": result.finish_reason})
        return JSONResponse({"id": rid, "object": kind, "created": created_at, "model": gen.model,
                             "choices": [choice],
                             "usage": usage_of(result, result.prompt_tokens, result.completion_tokens),
                             "tollgate": engine_report(result)})

    async def _stream_chunks(stream, gen, chat, rid, created_at, started, include_usage, continuous):
        kind = "chat.completion.chunk" if chat else "text_completion"
        prompt_tokens = getattr(stream, "prompt_tokens", 0)
        produced = 0

        def chunk(delta_text: str | None, finish: str | None, usage: dict | None = None, role: bool = False):
            if chat:
                delta = {"role": "assistant", "content": ""} if role else (
                    {} if delta_text is None else {"content": delta_text})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}
            body = {"id": rid, "object": kind, "created": created_at, "model": gen.model, "choices": [choice]}
            if continuous and usage is None:
                usage = usage_of(None, prompt_tokens, produced)
            if usage is not None:
                body["usage"] = usage
            return body

        try:
            if chat:
                yield chunk(None, None, role=True)
            async for delta in stream:
                produced += delta.token_count
                yield chunk(delta.text, None)
            result = stream.result
            metrics.observe(gen.model, result, time.perf_counter() - started)
            yield chunk(None if chat else "", result.finish_reason)
            if include_usage:
                final = {"id": rid, "object": kind, "created": created_at, "model": gen.model, "choices": [],
                         "usage": usage_of(result, result.prompt_tokens, result.completion_tokens),
                         "tollgate": engine_report(result)}
                yield final
        except EngineError as exc:
            yield {"error": {"message": f"the engine failed: {exc}", "type": "server_error", "param": None,
                             "code": "engine_error"}}
        finally:
            if stream.result is None:
                await stream.cancel()  # the client left: stop generating now

    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def completions(request: Request):
        return await generate(request, chat=False)

    async def embeddings(request: Request):
        if embedder is None:
            return WorkerRequestError("this worker serves no embedding model", status=404,
                                      code="model_not_found", param="model").response()
        try:
            body = await read_json(request)
            if body.get("model") != embedder.model_name:
                raise WorkerRequestError(f"The model `{body.get('model')}` does not exist.", status=404,
                                         code="model_not_found", param="model")
            texts = embedding_inputs(body.get("input"))
        except WorkerRequestError as exc:
            return exc.response()
        result = await embedder.embed(texts)
        return JSONResponse(embeddings_body(embedder.model_name, result))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.engine = engine
    app.state.metrics = metrics
    return app


def embedding_inputs(raw) -> list[str]:
    """The texts of an embeddings request: a string or an array of non-empty strings."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t for t in raw):
        raise WorkerRequestError("'input' must be a non-empty string or an array of non-empty strings",
                                 param="input")
    return raw


def embeddings_body(model: str, result) -> dict:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vec} for i, vec in enumerate(result.vectors)],
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        "tollgate": {"engine_seconds": result.engine_seconds, "queue_seconds": result.queue_seconds},
    }
