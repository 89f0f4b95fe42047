"""Wire types for /v1/chat/completions, validated at the edge.

Parsing produces plain dataclasses; nothing past this module sees raw JSON.
Unknown fields are ignored (as vLLM does), so newer SDKs keep working.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import InvalidRequest

ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass(frozen=True)
class ParsedMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatCompletionRequest:
    model: str
    messages: tuple[ParsedMessage, ...]
    max_tokens: int | None
    temperature: float
    top_p: float
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    seed: int | None
    user: str | None


def parse_json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}.", code="invalid_json")
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"'{name}' must be a number.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low:g} and {high:g}; got {value}.", param=name,
                             code="invalid_value")
    return float(value)


def _optional_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer.", param=name, code="invalid_type")
    return value


def _message_content(content, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # The array form: only text parts can reach a text model.
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest("Only text content parts are supported.", param=f"messages.[{index}].content",
                                     code="invalid_value")
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidRequest("Message content must be a string or an array of text parts.",
                         param=f"messages.[{index}].content", code="invalid_type")


def parse_chat_completion(body: dict, *, max_tokens_limit: int) -> ChatCompletionRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")

    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages",
                             code="missing_required_parameter")
    messages = []
    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict):
            raise InvalidRequest("Each message must be an object.", param=f"messages.[{i}]", code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"Invalid role {role!r}; expected one of {sorted(ROLES)}.",
                                 param=f"messages.[{i}].role", code="invalid_value")
        messages.append(ParsedMessage(role=role, content=_message_content(message.get("content"), i)))

    max_tokens = _optional_int(body, "max_completion_tokens")
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = _optional_int(body, "max_tokens"), "max_tokens"
    if max_tokens is not None and not 1 <= max_tokens <= max_tokens_limit:
        raise InvalidRequest(f"'{param}' must be between 1 and {max_tokens_limit}; got {max_tokens}.", param=param,
                             code="invalid_value")

    n = _optional_int(body, "n")
    if n not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n", code="invalid_value")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options", code="invalid_type")
    if stream_options and not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.", param="stream_options",
                             code="invalid_value")

    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop):
        stops = tuple(stop)
    else:
        raise InvalidRequest("'stop' must be a string or an array of up to 4 non-empty strings.", param="stop",
                             code="invalid_value")

    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string.", param="user", code="invalid_type")

    return ChatCompletionRequest(
        model=model,
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage", False)),
        stop=stops,
        seed=_optional_int(body, "seed"),
        user=user,
    )
