"""Wire types of the OpenAI API, as pydantic models (the shape of vLLM's ``protocol.py``).

The edge parses a body into a request type and hands that to the flow;
the flow answers with response types; nothing past the edge touches raw
JSON. The engine worker (engines/worker.py) speaks through the same types.
The error type (``ErrorResponse``) lives with the exceptions in ``errors.py``.

Request types forbid fields they do not know, as OpenAI does ("Unrecognized
request argument supplied"): a parameter the gateway would not act on is
refused, never dropped. Fields OpenAI defines that only some engines honour
are declared here and checked against the serving engine's
``supported_parameters`` by the route stage (:meth:`ChatCompletionRequest.engine_parameters`).

Bodies are parsed by pydantic-core's JSON parser, which rejects what
Python's ``json`` would turn into a 500 later: integers past 4,300 digits,
nesting deeper than its recursion limit, lone UTF-16 surrogates (they cannot
be encoded to UTF-8 for the tokenizer, the ledger or the span exporter).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import jsonschema
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .engines.base import ChatMessage, SamplingParams, TokenLogprob
from .errors import InvalidRequest



class RequestModel(BaseModel):
    # Strict: "stream": "yes" or "max_tokens": "5" is a caller's mistake to name, not a value to guess at
    # (OpenAI refuses both). JSON integers still fill float fields.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _omit_none(value) -> bool:
    return value is None


# ----------------------------------------------------------------- parsing


# Names pydantic puts in an error's location for the member of a union that failed; never field names here.
_UNION_MEMBER_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param_path(loc: tuple) -> str | None:
    """OpenAI's name for a nested parameter ("messages.[0].role"), cut where a union member's tag begins."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part.isidentifier() and part not in _UNION_MEMBER_TAGS:
            parts.append(part)
        else:
            break
    return ".".join(parts) or None


def _refusal(exc: ValidationError) -> InvalidRequest:
    """The first validation error as OpenAI's 400 (never echoing the input: it may be huge or a secret)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    error = errors[0]
    kind, param = error["type"], _param_path(error["loc"])
    if kind == "json_invalid":
        return InvalidRequest(f"We could not parse the JSON body of your request: {error['msg']}.",
                              code="invalid_json")
    if kind == "model_type" and not error["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param,
                              code="unknown_parameter")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    code = "invalid_type" if kind.endswith("_type") or kind in {"int_from_float", "bool_parsing"} else "invalid_value"
    # A value that fits no member of a union fails once per member: say what each member wanted.
    reasons = list(dict.fromkeys(e["msg"] for e in errors if _param_path(e["loc"]) == param))[:3]
    return InvalidRequest(f"Invalid value for '{param}': {'; or '.join(reasons)}.", param=param, code=code)


RequestT = TypeVar("RequestT", bound=BaseModel)


def parse_request(model: type[RequestT], raw: bytes) -> RequestT:
    """``raw`` as ``model``, or InvalidRequest naming the first thing wrong with it."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _refusal(exc) from None


# ----------------------------------------------------------------- chat completions: request

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
NonEmptyText = Annotated[str, Field(min_length=1)]


class TextContentPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessageParam(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(RequestModel):
    include_usage: bool = False
    # vLLM's extension: usage in every chunk (the running token count).
    continuous_usage_stats: bool = False


class JsonSchemaFormat(RequestModel):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_is_a_json_schema(self):
        # Checked at the edge, whatever engine serves the request: a broken schema is the caller's 400 here,
        # never a worker's failure later. (Engines refuse, also with a 400, what they cannot enforce.)
        if self.type != "json_schema":
            return self
        if self.json_schema is None:
            raise ValueError("'json_schema' is required when 'type' is 'json_schema'")
        schema = self.json_schema.schema_
        if schema is not None:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                path = "/".join(str(p) for p in exc.path)
                raise ValueError(f"'json_schema.schema' is not a valid JSON Schema"
                                 f"{f' (at {path})' if path else ''}: {exc.message}"[:500]) from None
        return self


class AnswerValidation(RequestModel):
    """Tollgate's ``validation`` extension: checks the answer must pass. A routed (``model: "auto"``)
    request that fails them is escalated to a stronger model, up to the policy's limit; any request
    reports the verdict in ``X-Tollgate-Validation``."""

    regex: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    json_schema: dict[str, Any] | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value):
        if value is None:  # null is "no regex", as for every optional field
            return value
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"'regex' does not compile: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _is_a_schema(cls, value):
        if value is None:
            return value
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"'json_schema' is not a valid JSON Schema: {exc.message}"[:500]) from None
        return value


class SamplingFields(RequestModel):
    """Sampling parameters shared by chat and text completions."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Probability | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    stop: NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    user: str | None = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("stream"):
            raise ValueError("'stream_options' is only allowed when 'stream' is true")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=self.stop_sequences,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            logit_bias=tuple(sorted((self.logit_bias or {}).items())),
        )

    def _sampling_parameters(self) -> set[str]:
        """The engine-dependent sampling parameters this request sets away from their neutral value."""
        used = set()
        if self.n not in (None, 1):
            used.add("n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                used.add(name)
        if self.logit_bias:
            used.add("logit_bias")
        return used


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions. Every field OpenAI defines is here; the route stage refuses those
    the serving engine does not honour, naming them."""

    model: NonEmptyText
    messages: Annotated[list[ChatMessageParam], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # honoured by the gateway (optimize_tokens)
    validation: AnswerValidation | None = None  # Tollgate's extension, honoured by the gateway (escalate)
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @field_validator("service_tier")
    @classmethod
    def _known_tier(cls, value):
        if value not in (None, "auto", "default"):
            raise ValueError("only 'auto' and 'default' are served here")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value, info: ValidationInfo):
        if value and not info.data.get("logprobs"):
            raise ValueError("'top_logprobs' is only allowed when 'logprobs' is true")
        return value

    @property
    def max_output_tokens(self) -> int | None:
        """``max_completion_tokens`` (the current name) or ``max_tokens`` (the deprecated one)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_output_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        params = super().to_sampling_params(max_tokens)
        if self.logprobs:
            params = dataclasses.replace(params, logprobs=True, top_logprobs=self.top_logprobs or 0)
        if self.response_format is None or self.response_format.type == "text":
            return params
        return dataclasses.replace(params, response_format=self.response_format.model_dump(by_alias=True,
                                                                                           exclude_none=True))

    def to_chat_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(ChatMessage(role=m.role, content=m.text, name=m.name) for m in self.messages)

    def engine_parameters(self) -> set[str]:
        """Parameters set here that the serving engine must honour (compare with its ``supported_parameters``).

        The gateway itself honours model, messages, max tokens, stream and
        stream_options, user, temperature, top_p, seed and stop (the last four
        every engine must take).
        """
        used = self._sampling_parameters()
        for name in ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "modalities",
                     "audio", "prediction", "web_search_options", "reasoning_effort", "metadata",
                     "prompt_cache_key", "safety_identifier"):
            if getattr(self, name) is not None:
                used.add(name)
        if self.logprobs:
            used.add("logprobs")
        if self.top_logprobs:
            used.add("top_logprobs")
        if self.store:
            used.add("store")
        if self.response_format is not None and self.response_format.type != "text":
            used.add("response_format")
        if any(m.name is not None for m in self.messages):
            used.add("messages.name")
        return used


class CompletionRequest(SamplingFields):
    """POST /v1/completions (the legacy text endpoint), as engine workers serve it."""

    model: NonEmptyText
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def engine_parameters(self) -> set[str]:
        used = self._sampling_parameters()
        if self.logprobs:
            used.add("logprobs")
        if self.echo:
            used.add("echo")
        if self.suffix is not None:
            used.add("suffix")
        if self.best_of not in (None, 1):
            used.add("best_of")
        return used


# ----------------------------------------------------------------- chat completions: response


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = 0


class CompletionUsage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> "CompletionUsage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))


class EngineReport(ResponseModel):
    """What an engine worker measured for one request (a Tollgate extension; vLLM sends none)."""

    engine_seconds: float = 0.0
    queue_seconds: float = 0.0
    time_to_first_token_seconds: float | None = None


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(ResponseModel):
    """``choices[].logprobs`` of a chat completion or chunk, as OpenAI sends it."""

    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None

    @classmethod
    def of(cls, tokens: list[TokenLogprob] | None) -> "ChoiceLogprobs":
        return cls(content=[
            ChatCompletionTokenLogprob(
                token=t.token, logprob=t.logprob, bytes=None if t.bytes is None else list(t.bytes),
                top_logprobs=[TopLogprob(token=a.token, logprob=a.logprob,
                                         bytes=None if a.bytes is None else list(a.bytes)) for a in t.top])
            for t in tokens or ()])


def token_logprobs_from_wire(content: list[dict] | None) -> list[TokenLogprob]:
    """OpenAI's ``logprobs.content`` entries (from a worker) as engine TokenLogprobs."""

    def one(entry: dict, top=()) -> TokenLogprob:
        raw = entry.get("bytes")
        return TokenLogprob(str(entry.get("token", "")), float(entry.get("logprob", 0.0)),
                            None if raw is None else tuple(int(b) for b in raw), top)

    return [one(e, tuple(one(a) for a in e.get("top_logprobs") or ())) for e in content or ()]


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatCompletionChoice(ResponseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    tollgate: EngineReport | None = Field(default=None, exclude_if=_omit_none)


class DeltaMessage(ResponseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_omit_none)
    content: str | None = Field(default=None, exclude_if=_omit_none)


class ChatCompletionChunkChoice(ResponseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChunkChoice]
    # Present (possibly null) only when the caller asked for usage, as OpenAI sends it.
    usage: CompletionUsage | None = Field(default=None, exclude_if=_omit_none)
    tollgate: EngineReport | None = Field(default=None, exclude_if=_omit_none)


# ----------------------------------------------------------------- text completions: response (workers)


class CompletionChoice(ResponseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class CompletionResponse(ResponseModel):
    """A text completion, whole or as one streamed chunk (OpenAI uses the same object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = Field(default=None, exclude_if=_omit_none)
    tollgate: EngineReport | None = Field(default=None, exclude_if=_omit_none)


# ----------------------------------------------------------------- embeddings

MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(RequestModel):
    model: NonEmptyText
    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def encode_embedding(vector, encoding_format: str) -> list[float] | str:
    """One vector as OpenAI sends it: a list of floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return list(vector)


class EmbeddingData(ResponseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingWorkerReport(ResponseModel):
    engine_seconds: float = 0.0
    queue_seconds: float = 0.0


class EmbeddingResponse(ResponseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
    tollgate: EmbeddingWorkerReport | None = Field(default=None, exclude_if=_omit_none)


# ----------------------------------------------------------------- models


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tollgate"


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----------------------------------------------------------------- text completions: the gateway's request

MAX_COMPLETION_PROMPTS = 16


class TextCompletionRequest(CompletionRequest):
    """POST /v1/completions at the gateway: one prompt, or a list of them (one choice each, by index).

    The gateway honours ``echo`` itself (it prepends the prompt to the text), so the engine is never
    asked for it. The route stage reads it the way it reads a chat request: the prompt as one user
    message counts its tokens (the chat template adds a few, so the estimate errs high, never low; what
    is billed is what the engine counted).
    """

    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=MAX_COMPLETION_PROMPTS)]

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def for_prompt(self, index: int) -> "TextCompletionRequest":
        """This request with only its ``index``-th prompt (each prompt is served and billed as its own request)."""
        return self.model_copy(update={"prompt": self.prompts[index]})

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def max_output_tokens_param(self) -> str:
        return "max_tokens"

    def to_chat_messages(self) -> tuple[ChatMessage, ...]:
        return (ChatMessage(role="user", content=self.prompt_text),)

    def engine_parameters(self) -> set[str]:
        return super().engine_parameters() - {"echo"}

    # What the route stage asks of a chat request, which a text completion cannot set.
    response_format: ClassVar[None] = None
    tools: ClassVar[None] = None
    validation: ClassVar[None] = None

