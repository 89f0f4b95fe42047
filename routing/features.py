"""What the router looks at: cheap signals of a request, and the vector the classifier reads.

Signals cost microseconds: the prompt's length in tokens (counted with the
all-MiniLM-L6-v2 tokenizer, the same one whichever engine serves, so the
classifier sees the same numbers in training and in production), the
conversation's depth (user turns), whether JSON or tools were asked for, and
keyword hits in the last user turn. The classifier reads them next to the
embedding of the last user turn, so it learns how much each one matters
instead of a hand-tuned rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import embedding

# Words that mark work a small model does badly (multi-step reasoning, proofs, high-stakes advice) or well
# (lookups and light edits). Kept short and generic: the embedding carries the rest.
HARD_WORDS = re.compile(
    r"\b(prove|proof|derive|step by step|justify|trade-offs?|reason(?:ing)? carefully|optimal|constraints?|"
    r"analy[sz]e|inconsisten\w*|contradict\w*|risks?|legal\w*|sue|dose|dosage|safe|symptoms?|emergency|"
    r"pension|mortgage|invest\w*|thorough\w*|evaluate|assumptions?)\b", re.I)
SIMPLE_WORDS = re.compile(
    r"\b(extract|pull out|list|classify|label|tag|translate|rewrite|rephrase|reword|fix the grammar|format|"
    r"sort|summar\w+|tl;dr|gist|headline|spelling|convert|title case|one word)\b", re.I)

SIGNAL_NAMES = ("log_prompt_tokens", "user_turns", "json_requested", "tools_requested", "hard_words",
                "simple_words")


@dataclass(frozen=True)
class Signals:
    prompt_tokens: int
    user_turns: int
    json_requested: bool
    tools_requested: bool
    hard_words: int
    simple_words: int

    def vector(self) -> list[float]:
        return [math.log1p(self.prompt_tokens), min(self.user_turns, 10), float(self.json_requested),
                float(self.tools_requested), min(self.hard_words, 5), min(self.simple_words, 5)]


def last_user_text(messages: Sequence[tuple[str, str]]) -> str:
    for role, content in reversed(messages):
        if role == "user":
            return content or ""
    return messages[-1][1] if messages else ""


def count_tokens(texts: Sequence[str]) -> int:
    tokenizer = embedding.get_tokenizer()
    # Each message's own [CLS]/[SEP] stand in for a chat template's per-message tokens.
    return sum(len(enc.ids) for enc in tokenizer.encode_batch(list(texts)))


def signals_of(messages: Sequence[tuple[str, str]], *, json_requested: bool, tools_requested: bool) -> Signals:
    """``messages`` as (role, text) pairs, in order."""
    last = last_user_text(messages)
    return Signals(
        prompt_tokens=count_tokens([content or "" for _, content in messages]) if messages else 0,
        user_turns=sum(1 for role, _ in messages if role == "user"),
        json_requested=json_requested,
        tools_requested=tools_requested,
        hard_words=len(HARD_WORDS.findall(last)),
        simple_words=len(SIMPLE_WORDS.findall(last)),
    )


def feature_matrix(last_texts: Sequence[str], signals: Sequence[Signals], embed_tokens: int) -> np.ndarray:
    """One row per request: the last user turn's embedding, then the signals."""
    vectors = embedding.embed_texts(list(last_texts), embed_tokens)
    extra = np.asarray([s.vector() for s in signals], dtype=np.float32).reshape(len(signals), len(SIGNAL_NAMES))
    return np.hstack([vectors, extra])


def record_messages(record: dict) -> list[tuple[str, str]]:
    """A prompt-set record's messages as (role, text) pairs."""
    return [(m["role"], m["content"]) for m in record["messages"]]


def record_signals(record: dict) -> Signals:
    return signals_of(record_messages(record), json_requested=bool(record.get("response_format")),
                      tools_requested=bool(record.get("tools")))
