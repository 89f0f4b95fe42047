"""The engine interface: what the gateway needs from anything that generates tokens.

An engine speaks in chat messages and returns text plus the usage it counted
itself. The in-process CPU engine implements it directly; a remote vLLM (or
CPU worker) replica implements it over the OpenAI HTTP API. The gateway never
knows which one it is talking to.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class EngineError(Exception):
    """The engine could not serve the request (down, overloaded, crashed)."""

    # Whether another try may succeed without paying twice: the failure was the replica's, and nothing
    # was generated for this request yet (connection refused or reset, the worker overloaded).
    retry_safe = False


class EngineUnavailable(EngineError):
    """No replica can take the request right now.

    Safe to retry elsewhere unless ``retry_safe=False`` says otherwise (a timed-out generation may still
    be running on its worker; a retry would pay for it twice).
    """

    def __init__(self, message: str = "", *, retry_safe: bool = True, unreachable: bool = False):
        super().__init__(message)
        self.retry_safe = retry_safe
        # The replica could not be reached at all: it is taken out until a health check finds it again.
        self.unreachable = unreachable
        # When known, how soon trying again makes sense (an open circuit's wait for its probe).
        self.retry_after_s: int | None = None


class PromptTooLong(Exception):
    """The prompt does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, limit: int):
        super().__init__(f"prompt has {prompt_tokens} tokens; the model accepts at most {limit}")
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class EngineRejected(EngineError):
    """The engine refused the request itself (a parameter it does not take): the caller's 400, not an outage."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# What every engine must honour. The gateway checks anything beyond these (penalties, logit_bias,
# response_format, ...) against the engine's ``supported_parameters`` before it reserves budget.
CORE_PARAMETERS = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop"})


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    # 0 keeps only the most likely token (OpenAI's meaning); never read as "unset".
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Passed on to engines that declare them in ``supported_parameters`` (vLLM does).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[str, int], ...] = ()
    response_format: dict | None = None
    # OpenAI's logprobs / top_logprobs (0..20): the log-probability of each generated token, and of the most
    # likely alternatives at its position, from the model's own distribution (before temperature, top-p and
    # any grammar mask: vLLM's default, "raw" logprobs).
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    # Set for /v1/completions: a raw prompt, used instead of the chat template.
    prompt: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability (OpenAI's ``logprobs.content[]`` entry).

    ``bytes`` is the token's UTF-8 bytes (OpenAI's field; ``None`` when a worker sent none); ``top`` the
    most likely tokens at that position, each a TokenLogprob without ``top`` of its own.
    """

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple["TokenLogprob", ...] = ()


@dataclass
class TextDelta:
    """A piece of generated text and how many tokens produced it (with their logprobs, when asked for)."""

    text: str
    token_count: int
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationResult:
    """What a finished (or cancelled) generation used. Counted by the engine, never estimated."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"
    cached_prompt_tokens: int = 0
    # Time from submission to the first generated token, and the request's share
    # of engine busy time (filled in by engines that measure it).
    time_to_first_token_s: float | None = None
    engine_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    # Every generated token's log-probability, when the request asked for them (SamplingParams.logprobs);
    # None otherwise. The end-of-sequence token is not among them (OpenAI never shows it).
    logprobs: list[TokenLogprob] | None = None

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-probability of the generated tokens (a confidence signal), None without logprobs."""
        if not self.logprobs:
            return None
        return sum(t.logprob for t in self.logprobs) / len(self.logprobs)

    @property
    def min_logprob(self) -> float | None:
        """The least likely generated token's log-probability, None without logprobs."""
        if not self.logprobs:
            return None
        return min(t.logprob for t in self.logprobs)


class Engine(abc.ABC):
    """One backend that can serve some models."""

    # Request parameters beyond CORE_PARAMETERS that this engine honours (names as in the OpenAI API;
    # "messages.name" for the per-message name). The route stage refuses a request that sets any other.
    supported_parameters: frozenset[str] = frozenset()

    @abc.abstractmethod
    def model_names(self) -> list[str]:
        """Names of the models this engine serves."""

    @abc.abstractmethod
    def count_prompt_tokens(self, model: str, messages: tuple[ChatMessage, ...]) -> int:
        """Tokens the prompt will use, with the chat template applied."""

    @abc.abstractmethod
    def context_window(self, model: str) -> int:
        """Maximum prompt + completion tokens for this model."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> "GenerationStream":
        """Start generating; the returned stream yields deltas, then holds the result."""

    async def aclose(self) -> None:  # pragma: no cover - default is nothing to close
        return None


class GenerationStream(abc.ABC):
    """Async iterator of TextDelta; `result` is set once iteration ends.

    Closing the stream early (client disconnect) must stop generation on the
    engine and leave `result` with the tokens produced so far.
    """

    result: GenerationResult | None = None

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._iterate()

    @abc.abstractmethod
    def _iterate(self) -> AsyncIterator[TextDelta]: ...

    def batches(self) -> AsyncIterator[list[TextDelta]]:
        """The same deltas in lists, each what was already there together (a worker's burst, read at once),
        so a streamed answer can pass a list on in one step and one write. Iterate either this or the
        stream, once. By default each delta is a list of its own."""
        return _one_by_one(self._iterate())

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop generating now; `result` reports what was produced."""


class BatchedGenerationStream(GenerationStream):
    """A stream whose deltas come a burst at a time (``_batches``); iterated one by one, each burst is
    flattened."""

    @abc.abstractmethod
    def _batches(self) -> AsyncIterator[list[TextDelta]]: ...

    async def _iterate(self) -> AsyncIterator[TextDelta]:
        async for batch in self._batches():
            for delta in batch:
                yield delta

    def batches(self) -> AsyncIterator[list[TextDelta]]:
        return self._batches()


async def _one_by_one(deltas: AsyncIterator[TextDelta]) -> AsyncIterator[list[TextDelta]]:
    try:
        async for delta in deltas:
            yield [delta]
    finally:
        await deltas.aclose()  # an engine's own clean-up runs now, not when the generator is collected
