"""Token optimization: the same request in fewer input tokens, step by step, each step accounted.

Plain functions over engine messages (``ChatMessage``); the
``optimize_tokens`` stage decides which steps run (per feature and per
request) and records what each saved. Every step keeps the last user turn
whole and keeps the system prompt's intent; none of them adds tokens.

* ``drop_duplicate_system_prompts``: the same system text sent twice (SDKs
  and agents that prepend their prompt on every turn) is kept once.
* ``compact_tool_outputs``: a tool message that holds JSON is re-encoded
  minified, with nulls and empty values dropped and long strings cut.
* ``select_context``: when the prompt is over its context budget, drop the
  context paragraphs of the last user turn (everything before its question)
  least similar to the question (embeddings, cosine) until it fits; the rest
  keep their order.
* ``split_history``: when the conversation is over its budget, which oldest
  turns to replace by one summary message (the stage has the cheapest tier
  write it, and caches it per conversation prefix), keeping the system
  prompts and as many recent turns as fit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .engines.base import ChatMessage

SYSTEM_ROLES = ("system", "developer")
SUMMARY_PREFIX = "Summary of the earlier conversation: "
CUT_MARK = "…"
CONCISE = "Answer concisely: the shortest complete answer, no preamble, no repetition."
THOROUGH = "Answer thoroughly, with the detail the question deserves."

Messages = tuple[ChatMessage, ...]
CountTokens = Callable[[Messages], int]


@dataclass
class StepSaving:
    step: str
    tokens_before: int
    tokens_after: int

    @property
    def saved(self) -> int:
        return self.tokens_before - self.tokens_after


@dataclass
class Optimized:
    messages: Messages
    steps: list[StepSaving] = field(default_factory=list)

    @property
    def tokens_saved(self) -> int:
        return sum(s.saved for s in self.steps)


def last_user_index(messages: Sequence[ChatMessage]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    return len(messages) - 1


def drop_duplicate_system_prompts(messages: Messages) -> Messages:
    seen: set[str] = set()
    kept = []
    for m in messages:
        if m.role in SYSTEM_ROLES:
            key = " ".join(m.content.split())
            if key in seen:
                continue
            seen.add(key)
        kept.append(m)
    return tuple(kept)


def _compact_value(value, max_chars: int):
    if isinstance(value, dict):
        out = {k: _compact_value(v, max_chars) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_compact_value(v, max_chars) for v in value if v is not None]
    if isinstance(value, str) and len(value) > max_chars:
        return value[:max_chars] + CUT_MARK
    return value


def compact_tool_outputs(messages: Messages, max_field_chars: int) -> Messages:
    out = []
    for m in messages:
        if m.role == "tool":
            try:
                data = json.loads(m.content)
            except ValueError:
                data = None
            if isinstance(data, (dict, list)):
                compact = json.dumps(_compact_value(data, max_field_chars), separators=(",", ":"), ensure_ascii=False)
                if len(compact) < len(m.content):
                    m = ChatMessage(role=m.role, content=compact, name=m.name)
        out.append(m)
    return tuple(out)


def context_chunks(messages: Messages) -> list[tuple[int, str]]:
    """(paragraph index, text) of the context in the last user turn: every paragraph but its last (RAG
    prompts put their documents before the question in the same message; the question always stays)."""
    last = last_user_index(messages)
    paragraphs = messages[last].content.split("\n\n")[:-1] if messages else []
    return [(j, p) for j, p in enumerate(paragraphs) if p.strip()]


def question(messages: Messages) -> str:
    """The last user turn's last paragraph: what the context is ranked against."""
    return messages[last_user_index(messages)].content.split("\n\n")[-1] if messages else ""


def cosine_to_question(vectors: np.ndarray) -> np.ndarray:
    """Row 0 is the question's embedding, the rest the chunks': each chunk's cosine to the question."""
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors[1:] @ vectors[0]


def select_context(messages: Messages, budget: int, count: CountTokens, similarity: Sequence[float]) -> Messages:
    """Drop the context paragraphs least similar to the question until the prompt fits ``budget``.

    ``similarity`` is aligned with ``context_chunks(messages)``; at least one paragraph is kept.
    """
    total = count(messages)
    chunks = context_chunks(messages)
    if total <= budget or len(chunks) < 2:
        return messages
    empty = count((ChatMessage("user", ""),))
    sizes = [count((ChatMessage("user", text),)) - empty for _, text in chunks]
    dropped: set[int] = set()
    for k in np.argsort(np.asarray(similarity), kind="stable"):  # least similar first
        if total <= budget or len(dropped) == len(chunks) - 1:
            break
        dropped.add(chunks[int(k)][0])
        total -= sizes[int(k)]
    last = last_user_index(messages)
    paragraphs = messages[last].content.split("\n\n")
    kept = "\n\n".join(p for j, p in enumerate(paragraphs) if j not in dropped)
    return (*messages[:last], ChatMessage(role="user", content=kept, name=messages[last].name), *messages[last + 1:])


@dataclass(frozen=True)
class HistorySplit:
    """How a conversation over its budget is cut: ``summarized`` turns become one summary message."""

    system: Messages
    summarized: Messages
    recent: Messages

    def with_summary(self, summary: str) -> Messages:
        return (*self.system, ChatMessage(role="system", content=SUMMARY_PREFIX + summary), *self.recent)


def split_history(messages: Messages, budget: int, count: CountTokens, summary_tokens: int) -> HistorySplit | None:
    """Which oldest turns to summarize so the rest (with a summary of ``summary_tokens``) fits ``budget``.

    System prompts stay first and whole; the last user turn (and what follows it) always stays. None when
    the conversation fits, or when nothing older than the last user turn could be summarized.
    """
    if count(messages) <= budget:
        return None
    system = tuple(m for m in messages if m.role in SYSTEM_ROLES)
    turns = tuple(m for m in messages if m.role not in SYSTEM_ROLES)
    last = last_user_index(turns)
    older, tail = turns[:last], turns[last:]
    if not older:
        return None
    placeholder = ChatMessage(role="system", content=SUMMARY_PREFIX + " x" * summary_tokens)
    for keep in range(len(older) - 1, -1, -1):  # as many recent turns as fit next to the summary
        recent = older[len(older) - keep:] if keep else ()
        if count((*system, placeholder, *recent, *tail)) <= budget or keep == 0:
            return HistorySplit(system=system, summarized=older[:len(older) - keep], recent=(*recent, *tail))
    return None


def with_verbosity(messages: Messages, verbosity: str | None) -> Messages:
    """OpenAI's ``verbosity``: ``low`` asks for a concise answer (fewer output tokens), ``high`` for detail;
    the instruction goes right after the leading system prompts, where a prefix cache keeps them."""
    instruction = {"low": CONCISE, "high": THOROUGH}.get(verbosity or "")
    if instruction is None:
        return messages
    i = 0
    while i < len(messages) and messages[i].role in SYSTEM_ROLES:
        i += 1
    return (*messages[:i], ChatMessage("system", instruction), *messages[i:])
