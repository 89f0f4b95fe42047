"""Respond: the OpenAI-shaped answer (wire types) and Tollgate's headers, from a settled context.

Headers: ``X-Tollgate-Cost`` (everything billed for the request, every
attempt), ``X-Tollgate-Model`` (the model that answered), ``X-Tollgate-Attempts``,
``X-Tollgate-Budget-Remaining`` (the smallest room left in a covering
budget) and ``X-Tollgate-Downgraded`` (``requested->served``) when a budget
downgraded the request. A stream's headers leave before its cost is known,
so they carry the model and the downgrade only.
"""

from __future__ import annotations

import re

from pydantic_core import to_json

from core.money import format_decimal

from ..engines.base import GenerationResult, TextDelta
from ..flow.context import RequestContext
from ..protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionResponse,
    CompletionUsage,
    DeltaMessage,
    EmbeddingData,
    EmbeddingResponse,
    EmbeddingUsage,
    encode_embedding,
)
from .settle import response_id


def stream_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {**ctx.response_headers, "X-Tollgate-Model": ctx.served.model}
    if ctx.reservation is not None and ctx.reservation.downgraded:
        headers["X-Tollgate-Downgraded"] = ctx.reservation.downgrade_header
    return headers


def headers(ctx: RequestContext) -> dict[str, str]:
    out = stream_headers(ctx)
    settled = ctx.settled
    if settled is not None:
        out["X-Tollgate-Cost"] = format_decimal(settled.cost)
        out["X-Tollgate-Attempts"] = str(len(ctx.attempts))
        if settled.budget_remaining is not None:
            out["X-Tollgate-Budget-Remaining"] = format_decimal(settled.budget_remaining)
    return out


def created(ctx: RequestContext) -> int:
    return int(ctx.received_at.timestamp())


def usage(result: GenerationResult) -> CompletionUsage:
    return CompletionUsage.of(result.prompt_tokens, result.completion_tokens, result.cached_prompt_tokens)


def completion(ctx: RequestContext, text: str) -> ChatCompletionResponse:
    result = ctx.attempts[-1].result
    logprobs = ChoiceLogprobs.of(result.logprobs) if ctx.request.logprobs else None
    return ChatCompletionResponse(
        id=response_id(ctx), created=created(ctx), model=ctx.served.model, usage=usage(result),
        choices=[ChatCompletionChoice(message=AssistantMessage(content=text), logprobs=logprobs,
                                      finish_reason=result.finish_reason)],
    )


# Stands for a content delta's text in a chunk rendered once per stream (see Chunks.content).
_TEXT_MARK = "tollgate-text-mark"


class Chunks:
    """The chunks of one streamed answer, in OpenAI's order: role, content deltas, finish, optional usage.

    A content chunk without running usage or logprobs differs from the next only in its text, so it is
    rendered once per stream and each delta's chunk is that JSON with the text put in (bytes, the same
    bytes pydantic would write): building and dumping a pydantic model per token was a fifth of the
    gateway's time per streamed token.
    """

    def __init__(self, ctx: RequestContext):
        self.ctx = ctx
        self.id = response_id(ctx)
        self.created = created(ctx)
        self.model = ctx.served.model
        self.continuous = ctx.request.continuous_usage
        self.logprobs = bool(ctx.request.logprobs)
        self.prompt_tokens = ctx.served.estimate.prompt_tokens  # counted by the route stage on this model
        self.produced = 0
        self._around_text: tuple[bytes, bytes] | None = None
        # Rendered content chunks: without running usage and logprobs, and while the template is sound.
        self._rendering = not self.continuous and not self.logprobs

    def _rendered(self, text: str) -> bytes | None:
        """The content chunk of ``text`` from the template (rendered on the first call); None if there is none."""
        if self._around_text is None:
            self._around_text = _split_at_mark(self._content_chunk(_TEXT_MARK, None).model_dump_json().encode())
            if self._around_text is None:
                self._rendering = False
                return None
        before, after = self._around_text
        return before + to_json(text) + after

    def _content_chunk(self, text: str, delta: TextDelta | None):
        running = CompletionUsage.of(self.prompt_tokens, self.produced) if self.continuous else None
        logprobs = ChoiceLogprobs.of(delta.logprobs) if self.logprobs and delta is not None else None
        return self._chunk([ChatCompletionChunkChoice(delta=DeltaMessage(content=text), logprobs=logprobs)],
                           running)

    def _chunk(self, choices, usage_now: CompletionUsage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                                   usage=usage_now)

    def role(self) -> ChatCompletionChunk:
        return self._chunk([ChatCompletionChunkChoice(delta=DeltaMessage(role="assistant", content=""))])

    def content(self, delta: TextDelta) -> ChatCompletionChunk | bytes:
        """The delta's chunk: a wire type, or (the common case) its JSON from the rendered template."""
        self.produced += delta.token_count
        if self._rendering and (rendered := self._rendered(delta.text)) is not None:
            return rendered
        return self._content_chunk(delta.text, delta)

    def finish(self) -> ChatCompletionChunk:
        result = self.ctx.attempts[-1].result
        return self._chunk([ChatCompletionChunkChoice(delta=DeltaMessage(), finish_reason=result.finish_reason)])

    def usage(self) -> ChatCompletionChunk | None:
        if not self.ctx.request.include_usage:
            return None
        return self._chunk([], usage(self.ctx.attempts[-1].result))


def _split_at_mark(rendered: bytes) -> tuple[bytes, bytes] | None:
    """A chunk rendered with the mark as its text, split around it; None unless the mark is there once (a
    model name could contain it)."""
    if rendered.count(_TEXT_MARK.encode()) != 1:
        return None
    before, _, after = rendered.partition(to_json(_TEXT_MARK))
    return before, after


def replayed_deltas(result: GenerationResult, words_per_delta: int = 4) -> list[TextDelta]:
    """A cached answer's text as stream deltas (a few words each, their token share spread evenly), so a
    streamed hit reads like a generation and its running usage adds up to the cached completion tokens."""
    pieces = [piece for piece in _word_runs(result.text, words_per_delta) if piece] or [result.text]
    tokens, n = result.completion_tokens, len(pieces)
    return [TextDelta(text=piece, token_count=tokens // n + (1 if i < tokens % n else 0))
            for i, piece in enumerate(pieces)]


def _word_runs(text: str, size: int) -> list[str]:
    runs = re.findall(r"\S+\s*|\s+", text)
    return ["".join(runs[i:i + size]) for i in range(0, len(runs), size)]


def embeddings(ctx: RequestContext) -> EmbeddingResponse:
    result = ctx.attempts[-1].result
    encoding = ctx.request.encoding_format
    return EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=encode_embedding(v, encoding)) for i, v in enumerate(result.vectors)],
        model=ctx.served.model,
        usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
    )


# ----------------------------------------------------------------- text completions


def completion_id(ctx: RequestContext) -> str:
    return f"cmpl-{ctx.request_id}"


def text_completion(ctx: RequestContext, text: str, index: int = 0) -> CompletionResponse:
    """One prompt's answer (``echo`` puts the prompt in front of the generated text, as OpenAI does)."""
    result = ctx.attempts[-1].result
    if ctx.request.echo:
        text = ctx.request.prompt_text + text
    return CompletionResponse(
        id=completion_id(ctx), created=created(ctx), model=ctx.served.model, usage=usage(result),
        choices=[CompletionChoice(index=index, text=text, finish_reason=result.finish_reason)],
    )


def merged_completions(answers: list[CompletionResponse]) -> CompletionResponse:
    """The answers to each prompt of one request as one response: a choice per prompt, usage added up."""
    first = answers[0]
    prompt = sum(a.usage.prompt_tokens for a in answers)
    produced = sum(a.usage.completion_tokens for a in answers)
    cached = sum(a.usage.prompt_tokens_details.cached_tokens for a in answers)
    return first.model_copy(update={"choices": [c for a in answers for c in a.choices],
                                    "usage": CompletionUsage.of(prompt, produced, cached)})


class CompletionChunks(Chunks):
    """The chunks of one streamed text completion: the echoed prompt (if asked), text deltas, finish, usage."""

    def __init__(self, ctx: RequestContext):
        super().__init__(ctx)
        self.id = completion_id(ctx)
        self._rendering = not self.continuous  # (a text completion's chunk carries no logprobs)

    def _text(self, text: str, finish_reason: str | None = None,
              usage_now: CompletionUsage | None = None) -> CompletionResponse:
        return CompletionResponse(id=self.id, created=self.created, model=self.model, usage=usage_now,
                                  choices=[CompletionChoice(text=text, finish_reason=finish_reason)])

    def role(self) -> CompletionResponse | None:
        return self._text(self.ctx.request.prompt_text) if self.ctx.request.echo else None

    def _content_chunk(self, text: str, delta: TextDelta | None) -> CompletionResponse:
        running = CompletionUsage.of(self.prompt_tokens, self.produced) if self.continuous else None
        return self._text(text, usage_now=running)

    def content(self, delta: TextDelta) -> CompletionResponse | bytes:
        self.produced += delta.token_count
        if self._rendering and (rendered := self._rendered(delta.text)) is not None:
            return rendered
        return self._content_chunk(delta.text, delta)

    def finish(self) -> CompletionResponse:
        return self._text("", finish_reason=self.ctx.attempts[-1].result.finish_reason)

    def usage(self) -> CompletionResponse | None:
        if not self.ctx.request.include_usage:
            return None
        return CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[],
                                  usage=usage(self.ctx.attempts[-1].result))
