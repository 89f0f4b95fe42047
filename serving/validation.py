"""Validators: is an answer good enough to return, or should a stronger model try?

Each check looks at one finished answer (its text and its ``GenerationResult``)
and returns a failure reason, or None when it passes. Which checks run is the
routing policy's (``routing.models.RoutingPolicy``) and the caller's:

* ``json``: the request asked for ``response_format`` json_object or
  json_schema, and the answer is not JSON (or does not validate against the
  schema, with the ``jsonschema`` library);
* ``logprob_mean`` / ``logprob_min``: the tokens' mean or lowest
  log-probability is under the policy's threshold (low confidence);
* ``truncated``: the answer stopped at ``max_tokens`` (``finish_reason:
  "length"``) and the policy says that counts as a failure;
* ``unsafe``: the unsafe-content check (``TOLLGATE_UNSAFE_CONTENT_CHECK``, a
  dotted path to ``check(text) -> reason | None``; the default flags a short
  list of patterns) flags the answer;
* ``caller_regex`` / ``caller_schema``: the request's own ``validation``
  field (a Tollgate extension: ``{"regex": ..., "json_schema": {...}}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import jsonschema
from django.conf import settings
from django.utils.module_loading import import_string

from .engines.base import GenerationResult

# The default unsafe-content check: obvious leaks and instructions a gateway should never pass on. A real
# deployment plugs in its moderation model through TOLLGATE_UNSAFE_CONTENT_CHECK.
UNSAFE_PATTERNS = (
    (re.compile(r"\b(?:\d[ -]?){13,16}\b"), "card_number"),
    (re.compile(r"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----"), "private_key"),
    (re.compile(r"\b(?:sk|tg)-[A-Za-z0-9_-]{20,}\b"), "api_key"),
    (re.compile(r"\bhow to (?:build|make) (?:a )?(?:bomb|explosive)", re.IGNORECASE), "weapons"),
)


def default_unsafe_check(text: str) -> str | None:
    for pattern, reason in UNSAFE_PATTERNS:
        if pattern.search(text):
            return reason
    return None


@lru_cache(maxsize=4)
def _unsafe_check(path: str) -> Callable[[str], str | None]:
    return import_string(path)


@dataclass(frozen=True)
class Checks:
    """The checks that apply to one request."""

    json_schema: dict | None = None  # json_object: {}; json_schema: the schema; None: no JSON check
    logprob_mean: float | None = None
    logprob_min: float | None = None
    truncation: bool = False
    unsafe: bool = False
    caller_regex: str | None = None
    caller_schema: dict | None = None

    @property
    def needs_logprobs(self) -> bool:
        return self.logprob_mean is not None or self.logprob_min is not None

    @property
    def any(self) -> bool:
        return any((self.json_schema is not None, self.needs_logprobs, self.truncation, self.unsafe,
                    self.caller_regex, self.caller_schema is not None))


def _json_failure(text: str, schema: dict | None, reason: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return f"{reason}_invalid_json"
    if schema:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            return f"{reason}_schema_mismatch"
        except jsonschema.SchemaError:
            return None  # the schema was checked when the request was parsed; never blame the answer for it
    return None


def checks_for(request, policy) -> Checks:
    """The checks for a chat request (``serving.protocol.ChatCompletionRequest``) under a routing policy."""
    json_schema = None
    response_format = request.response_format
    if policy.validate_json and response_format is not None and response_format.type != "text":
        json_schema = (response_format.json_schema.schema_ or {}) if response_format.json_schema else {}
    caller = request.validation
    return Checks(json_schema=json_schema, logprob_mean=policy.logprob_mean_threshold,
                  logprob_min=policy.logprob_min_threshold, truncation=policy.escalate_on_truncation,
                  unsafe=policy.check_unsafe_content, caller_regex=caller.regex if caller else None,
                  caller_schema=caller.json_schema if caller else None)


def failure(checks: Checks, text: str, result: GenerationResult) -> str | None:
    """The first check the answer fails, or None."""
    if checks.json_schema is not None:
        reason = _json_failure(text, checks.json_schema, "json")
        if reason:
            return reason
    if checks.truncation and result.finish_reason == "length":
        return "truncated"
    if checks.needs_logprobs and result.logprobs:
        values = [t.logprob for t in result.logprobs]
        if checks.logprob_mean is not None and sum(values) / len(values) < checks.logprob_mean:
            return "low_confidence_mean"
        if checks.logprob_min is not None and min(values) < checks.logprob_min:
            return "low_confidence_min"
    if checks.unsafe:
        reason = _unsafe_check(settings.TOLLGATE_UNSAFE_CONTENT_CHECK)(text)
        if reason:
            return f"unsafe_{reason}"
    if checks.caller_regex is not None and not re.search(checks.caller_regex, text):
        return "caller_regex"
    if checks.caller_schema is not None:
        reason = _json_failure(text, checks.caller_schema, "caller")
        if reason:
            return reason
    return None
