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
import time
import uuid


from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import errors
from ..protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    DeltaMessage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    EmbeddingWorkerReport,
    EngineReport,
    ModelCard,
    ModelList,
    encode_embedding,
    parse_request,
)
from .base import Engine, EngineError, EngineRejected, GenerationRequest, GenerationResult, PromptTooLong

# vLLM's default is "the rest of the context"; the gateway always sends max_tokens, so this is for direct callers.
DEFAULT_MAX_TOKENS = 16

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)


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


def engine_report(result: GenerationResult | None) -> EngineReport | None:
    """The ``tollgate`` object: what the engine measured for one request."""
    if result is None:
        return None
    return EngineReport(engine_seconds=result.engine_seconds, queue_seconds=result.extra.get("queue_seconds", 0.0),
                        time_to_first_token_seconds=result.time_to_first_token_s)


def usage_of(result: GenerationResult | None, prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage.of(prompt_tokens, completion_tokens, result.cached_prompt_tokens if result else 0)


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


class _SSEResponse:
    """Sends chunks as server-sent events; a client disconnect cancels the producer (and so the generation)."""

    def __init__(self, chunks):
        self.chunks = chunks

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})

        async def pump():
            async for chunk in self.chunks:
                data = b"data: " + chunk.model_dump_json().encode() + b"\n\n"
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
        return _json(ModelList(data=[ModelCard(id=m, created=created) for m in model_ids()]))

    async def prometheus(request: Request):
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def generation_request(body: ChatCompletionRequest | CompletionRequest) -> GenerationRequest:
        if engine is None or body.model not in engine.model_names():
            raise errors.ModelNotFound(f"The model `{body.model}` does not exist.", param="model")
        unsupported = sorted(body.engine_parameters() - engine.supported_parameters)
        if isinstance(body, CompletionRequest) and body.logprobs:
            unsupported = ["logprobs"]  # the legacy integer form: only chat completions carry logprobs here
        if unsupported:
            raise errors.InvalidRequest(f"This engine does not support the parameter '{unsupported[0]}'.",
                                        param=unsupported[0], code="unsupported_parameter")
        if isinstance(body, ChatCompletionRequest):
            max_tokens = body.max_output_tokens or DEFAULT_MAX_TOKENS
            return GenerationRequest(request_id=uuid.uuid4().hex, model=body.model,
                                     messages=body.to_chat_messages(), sampling=body.to_sampling_params(max_tokens))
        max_tokens = body.max_tokens or DEFAULT_MAX_TOKENS
        return GenerationRequest(request_id=uuid.uuid4().hex, model=body.model, messages=(),
                                 sampling=body.to_sampling_params(max_tokens), prompt=body.prompt_text)

    async def generate(request: Request, kind: type[ChatCompletionRequest] | type[CompletionRequest]):
        chat = kind is ChatCompletionRequest
        try:
            body = parse_request(kind, await request.body())
            gen = generation_request(body)
            stream = engine.stream(gen)
        except errors.OpenAIError as exc:
            return errors.error_response(exc)
        except PromptTooLong as exc:
            return errors.error_response(errors.ContextLengthExceeded(str(exc), param="messages"))
        except ValueError as exc:
            return errors.error_response(errors.InvalidRequest(str(exc)))
        except EngineError as exc:
            return errors.error_response(errors.EngineUnavailable(str(exc)))
        started = time.perf_counter()
        rid = ("chatcmpl-" if chat else "cmpl-") + gen.request_id
        created_at = int(time.time())
        wants_logprobs = chat and bool(body.logprobs)
        if body.stream:
            # The first delta before the response starts: an engine's refusal (a schema it cannot enforce)
            # is then a 400, as vLLM answers it, not an error event inside a 200 stream.
            deltas = aiter(stream)
            try:
                first = await anext(deltas, None)
            except EngineRejected as exc:
                return errors.error_response(errors.InvalidRequest(str(exc), param=exc.param))
            except EngineError as exc:
                return errors.error_response(errors.EngineUnavailable(f"the engine failed: {exc}"))
            return _SSEResponse(_stream_chunks(stream, deltas, first, gen, chat, rid, created_at, started,
                                               body.include_usage, body.continuous_usage, wants_logprobs))
        parts = []
        try:
            async for delta in stream:
                parts.append(delta.text)
        except EngineRejected as exc:
            return errors.error_response(errors.InvalidRequest(str(exc), param=exc.param))
        except EngineError as exc:
            return errors.error_response(errors.EngineUnavailable(f"the engine failed: {exc}"))
        result = stream.result
        metrics.observe(gen.model, result, time.perf_counter() - started)
        text = "".join(parts)
        usage = usage_of(result, result.prompt_tokens, result.completion_tokens)
        if chat:
            return _json(ChatCompletionResponse(
                id=rid, created=created_at, model=gen.model, usage=usage, tollgate=engine_report(result),
                choices=[ChatCompletionChoice(message=AssistantMessage(content=text),
                                              logprobs=ChoiceLogprobs.of(result.logprobs) if wants_logprobs else None,
                                              finish_reason=result.finish_reason)]))
        return _json(CompletionResponse(
            id=rid, created=created_at, model=gen.model, usage=usage, tollgate=engine_report(result),
            choices=[CompletionChoice(text=text, finish_reason=result.finish_reason)]))

    async def _stream_chunks(stream, deltas, first, gen, chat, rid, created_at, started, include_usage, continuous,
                             wants_logprobs):
        prompt_tokens = getattr(stream, "prompt_tokens", 0)
        produced = 0

        async def all_deltas():
            if first is not None:
                yield first
                async for delta in deltas:
                    yield delta

        def chunk(text: str | None, finish: str | None, *, role: bool = False, usage=None, report=None, final=False,
                  logprobs=None):
            if continuous and usage is None and not final:
                usage = usage_of(None, prompt_tokens, produced)
            if chat:
                choices = [] if final else [ChatCompletionChunkChoice(
                    delta=DeltaMessage(role="assistant", content="") if role else DeltaMessage(content=text),
                    logprobs=ChoiceLogprobs.of(logprobs) if wants_logprobs and logprobs is not None else None,
                    finish_reason=finish)]
                return ChatCompletionChunk(id=rid, created=created_at, model=gen.model, choices=choices,
                                           usage=usage, tollgate=report)
            choices = [] if final else [CompletionChoice(text=text or "", finish_reason=finish)]
            return CompletionResponse(id=rid, created=created_at, model=gen.model, choices=choices, usage=usage,
                                      tollgate=report)

        try:
            if chat:
                yield chunk(None, None, role=True)
            async for delta in all_deltas():
                produced += delta.token_count
                yield chunk(delta.text, None, logprobs=delta.logprobs)
            result = stream.result
            metrics.observe(gen.model, result, time.perf_counter() - started)
            yield chunk(None if chat else "", result.finish_reason)
            if include_usage:
                yield chunk(None, None, final=True, usage=usage_of(result, result.prompt_tokens,
                                                                   result.completion_tokens),
                            report=engine_report(result))
        except EngineError as exc:
            yield errors.EngineUnavailable(f"the engine failed: {exc}", code="engine_error").wire()
        finally:
            if stream.result is None:
                await stream.cancel()  # the client left: stop generating now
            await deltas.aclose()

    async def chat_completions(request: Request):
        return await generate(request, ChatCompletionRequest)

    async def completions(request: Request):
        return await generate(request, CompletionRequest)

    async def embeddings(request: Request):
        try:
            if embedder is None:
                raise errors.ModelNotFound("This worker serves no embedding model.", param="model")
            body = parse_request(EmbeddingRequest, await request.body())
            if body.model != embedder.model_name:
                raise errors.ModelNotFound(f"The model `{body.model}` does not exist.", param="model")
            if body.dimensions not in (None, embedder.dimensions):
                raise errors.InvalidRequest(f"This model returns {embedder.dimensions} dimensions only.",
                                            param="dimensions", code="invalid_value")
        except errors.OpenAIError as exc:
            return errors.error_response(exc)
        result = await embedder.embed(body.texts)
        return _json(embeddings_body(embedder.model_name, result, body.encoding_format))

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


def embeddings_body(model: str, result, encoding_format: str = "float") -> EmbeddingResponse:
    return EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=encode_embedding(v, encoding_format))
              for i, v in enumerate(result.vectors)],
        model=model,
        usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        tollgate=EmbeddingWorkerReport(engine_seconds=result.engine_seconds, queue_seconds=result.queue_seconds),
    )
