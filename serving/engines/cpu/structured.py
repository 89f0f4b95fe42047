"""Structured output for the CPU engine: ``response_format`` enforced by constrained decoding.

The grammar library is llguidance, one of the two structured-output backends
vLLM itself uses (the other is xgrammar). Chosen by measurement on this
engine's vocabulary (``bench/structured_output.py``, numbers in
docs/benchmarks.md): compiling a JSON schema takes 0.4-1.1 ms with llguidance
against 5-18 ms with xgrammar (13-16x), and the per-token mask costs both a
few microseconds at the median (xgrammar's p99 is lower, ~20 us against
~60-90 us, both far under a decode step). Compiling happens on the request
path (every request may bring a new schema), so compile time is what shows up
in time to first token. llguidance also installs as one self-contained
wheel, while xgrammar's package pulls in triton (hundreds of MB) that a CPU
engine never uses.

The vocabulary. WordPiece gives a token two texts: "the" reads " the" after
another token and "the" at the start ("##ing" reads "ing" after another
token). A grammar library needs one string per token, so constrained decoding
uses the continuation text throughout and drops the answer's leading
whitespace (JSON ignores it). The tokenizer is uncased: a schema that
requires an upper-case key, enum or const value cannot be written at all, and
is refused up front with a 400 rather than left to fail mid-answer.

Ending within ``max_tokens``. The model's text is meaningless, so left alone
it writes strings and keys until the budget runs out. Every few tokens (every
token near the end) the constraint simulates the shortest way it knows to
close the document from where it is (prefer end-of-sequence, closing quotes,
braces and brackets, then the longest allowed token) and counts its tokens;
once the tokens left come within a small margin of that count, the engine
stops sampling and writes the closing path. When even that cannot close in
time, the answer ends with finish_reason "length", as OpenAI's does.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from .tokenizer import SEP_ID, ChatTokenizer

# How often to simulate the closing path: when the tokens left exceed the last estimate by a slack, the
# next check is due after slack / GROWTH_PER_TOKEN tokens (at most CHECK_EVERY_FAR), since one token
# rarely lengthens the path by more than that (e.g. '{"' or '[['); every token once the slack is small.
# Close once the tokens left are within CLOSE_MARGIN of the estimate. A simulation costs ~30-100 us per
# token of the path, so checking every token would cost more than the decode step itself.
GROWTH_PER_TOKEN = 3
CHECK_EVERY_FAR = 16
CHECK_MARGIN = 32
CLOSE_MARGIN = 3
# Never simulate a closing path longer than this (the grammar may need a long required literal).
MAX_CLOSING_PATH = 256
_GRAMMAR_CACHE_SIZE = 256


class StructuredOutputError(ValueError):
    """The response_format cannot be enforced (an invalid or unsupported schema): the caller's 400."""


def _literal_strings(schema, out: list[str]) -> None:
    """Strings a document must contain verbatim: required property names, enum and const values."""
    if isinstance(schema, dict):
        for name in schema.get("required") or ():
            if isinstance(name, str):
                out.append(name)
        for value in schema.get("enum") or ():
            if isinstance(value, str):
                out.append(value)
        if isinstance(schema.get("const"), str):
            out.append(schema["const"])
        for key, value in schema.items():
            if key not in ("enum", "const", "required", "examples", "default", "description", "title"):
                _literal_strings(value, out)
    elif isinstance(schema, list):
        for item in schema:
            _literal_strings(item, out)


class GrammarVocabulary:
    """The engine's tokens as llguidance sees them, plus what constrained sampling needs to map masks.

    ``columns``: the tokenizer id behind each logits column (the model scores only generable ids).
    Built once per engine (about 0.5 s); thread-safe to share.
    """

    def __init__(self, tokenizer: ChatTokenizer, generable_ids: list[int]):
        texts = tokenizer.continuation_texts()
        size = tokenizer.vocab_size
        generable = set(generable_ids)
        token_bytes: list[bytes] = []
        special: list[int] = []
        for i in range(size):
            text = texts[i]
            if i == SEP_ID or i not in generable or not text:
                # llguidance's convention for special tokens: 0xFF then a name; never matched as text.
                token_bytes.append(b"\xff[" + str(i).encode() + b"]")
                special.append(i)
            else:
                token_bytes.append(text.encode())
        self.size = size
        self.token_bytes = token_bytes
        self.producible = set("".join(texts[i] for i in generable_ids if i != SEP_ID))
        self._lookup: dict[bytes, int] = {}
        special_ids = set(special)
        for i, b in enumerate(token_bytes):
            if i not in special_ids:
                self._lookup.setdefault(b, i)
        self._longest = max(len(b) for b in self._lookup)
        wrapper = _TokenizerShim(token_bytes, special, self.greedy_tokenize)
        self.lltokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper), eos_token=SEP_ID)

        self.columns = np.asarray(generable_ids, dtype=np.int64)
        self.eos_column = int(np.flatnonzero(self.columns == SEP_ID)[0])
        # The closing path's preference: end of sequence first; then, inside a string, the closing quote; else
        # the closing brace or bracket, then a quote (a key or value to write), then a comma; the variant without a leading
        # space first; then every other token, longest text first (a key or literal the grammar
        # forces then takes one token, not one per letter). "Inside a string" is read off the mask:
        # only there may an ordinary word follow.
        by_text: dict[str, list[int]] = {}
        for col, tid in enumerate(generable_ids):
            if tid != SEP_ID:
                by_text.setdefault(texts[tid], []).append(col)

        def variants(*chars: str) -> list[int]:
            return [c for ch in chars for c in by_text.get(ch, []) + by_text.get(" " + ch, [])]

        self.word_id = generable_ids[by_text[" the"][0]]

        # The comma last: it ends a number (which a longest digit token would otherwise only extend).
        def with_ids(cols: list[int]) -> list[tuple[int, int]]:
            return [(c, generable_ids[c]) for c in cols]

        self.closing_preferred = with_ids([self.eos_column, *variants("}", "]", '"', ",")])
        self.closing_preferred_in_string = with_ids([self.eos_column, *variants('"', "}", "]")])
        # Rank of every other column: longer text first.
        lengths = np.asarray([len(texts[t].encode()) for t in generable_ids], dtype=np.int64)
        self.fallback_rank = np.argsort(np.argsort(-lengths, kind="stable"), kind="stable")
        # Masks come per tokenizer id; the logits columns are [SEP] then one contiguous id range (the
        # tokenizer's generable ids), so a slice maps them without a 30,000-element gather.
        tail = self.columns[1:]
        self._tail_range = ((int(tail[0]), int(tail[-1]) + 1)
                            if len(tail) and np.array_equal(tail, np.arange(tail[0], tail[-1] + 1)) else None)

        self._grammars: OrderedDict[str, str] = OrderedDict()
        self._grammars_lock = threading.Lock()

    def greedy_tokenize(self, data: bytes | str) -> list[int]:
        """Longest-match tokens of ``data`` over the continuation texts.

        Hand-written because llguidance re-tokenizes the bytes a grammar forces, and needs a tokenizer
        whose tokens spell exactly those bytes in its own table; the real WordPiece tokenizer does not
        (its "{" is the token that reads " {").
        """
        if isinstance(data, str):
            data = data.encode()
        out, i, n = [], 0, len(data)
        while i < n:
            for length in range(min(self._longest, n - i), 0, -1):
                tid = self._lookup.get(data[i:i + length])
                if tid is not None:
                    out.append(tid)
                    i += length
                    break
            else:
                i += 1  # a byte no token spells (never forced by a grammar we accepted)
        return out

    # ---------------------------------------------------------------- grammars
    def grammar_for(self, response_format: dict) -> str:
        """The llguidance grammar enforcing ``response_format`` (cached), or StructuredOutputError."""
        kind = response_format.get("type")
        if kind == "json_object":
            schema = {"type": "object"}
        elif kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if schema is None:
                schema = {}
            if not isinstance(schema, dict):
                raise StructuredOutputError("response_format.json_schema.schema must be a JSON object")
        else:
            raise StructuredOutputError(f"response_format type {kind!r} is not enforced here")
        key = json.dumps(schema, sort_keys=True)
        with self._grammars_lock:
            grammar = self._grammars.get(key)
            if grammar is not None:
                self._grammars.move_to_end(key)
                return grammar
        literals: list[str] = []
        _literal_strings(schema, literals)
        for literal in literals:
            missing = sorted(set(literal) - self.producible)
            if missing:
                raise StructuredOutputError(
                    f"the schema requires {literal!r}, which this model's vocabulary (uncased WordPiece) cannot "
                    f"write (no token has {''.join(missing)!r})")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        except (ValueError, TypeError) as exc:
            raise StructuredOutputError(f"invalid JSON schema: {exc}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise StructuredOutputError(f"unsupported JSON schema: {messages[0] if messages else 'invalid'}")
        with self._grammars_lock:
            self._grammars[key] = grammar
            while len(self._grammars) > _GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        return grammar

    def constraint(self, response_format: dict) -> "GrammarConstraint":
        return GrammarConstraint(self, self.grammar_for(response_format))

    def columns_of(self, bitmask: np.ndarray) -> np.ndarray:
        """A token bitmask (int32 words, one bit per tokenizer id) as a bool per logits column."""
        bits = np.unpackbits(bitmask.view(np.uint8), bitorder="little").view(bool)
        if self._tail_range is None:
            return bits[self.columns]
        start, stop = self._tail_range
        out = np.empty(len(self.columns), dtype=bool)
        out[0] = bits[self.columns[0]]
        out[1:] = bits[start:stop]
        return out


class _TokenizerShim:
    """What llguidance.TokenizerWrapper reads: the byte table, special ids and a tokenize callable."""

    def __init__(self, tokens: list[bytes], special: list[int], tokenize):
        self.eos_token_id = SEP_ID
        self.bos_token_id = None
        self.tokens = tokens
        self.special_token_ids = special
        self._tokenize = tokenize

    def __call__(self, data):
        return self._tokenize(data)


class GrammarConstraint:
    """One sequence's grammar state: the mask of allowed logits columns, the tokens it took, closing."""

    __slots__ = ("vocabulary", "matcher", "_bitmask", "closing", "close_estimate", "failed", "_next_check")

    def __init__(self, vocabulary: GrammarVocabulary, grammar: str):
        self.vocabulary = vocabulary
        self.matcher = llguidance.LLMatcher(vocabulary.lltokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise StructuredOutputError(f"unsupported JSON schema: {self.matcher.get_error()}")
        self._bitmask = llg_numpy.allocate_token_bitmask(1, vocabulary.size)
        self.closing = False  # writing the closing path instead of sampling
        self.close_estimate = 0  # tokens the closing path took at the last simulation
        self.failed = False  # the grammar allows no token (cannot go on): the answer ends with "length"
        self._next_check = 0  # n_out at which to simulate the closing path again

    def _fill(self) -> None:
        llg_numpy.fill_next_token_bitmask(self.matcher, self._bitmask)

    def allowed(self) -> np.ndarray:
        """Bool per logits column: may the next token be that column's token?"""
        self._fill()
        return self.vocabulary.columns_of(self._bitmask)

    def _closing_pick(self) -> int | None:
        """The closing path's next column from the freshly filled bitmask (None: no token allowed)."""
        vocabulary = self.vocabulary
        words = self._bitmask[0]

        def allows(tid: int) -> int:  # one bit of the mask, without unpacking all 30,000
            return (int(words[tid >> 5]) >> (tid & 31)) & 1

        in_string = allows(vocabulary.word_id)
        for col, tid in vocabulary.closing_preferred_in_string if in_string else vocabulary.closing_preferred:
            if allows(tid):
                return col
        candidates = np.flatnonzero(vocabulary.columns_of(self._bitmask))
        if not len(candidates):
            return None
        return int(candidates[np.argmin(vocabulary.fallback_rank[candidates])])

    def tokens_to_close(self, limit: int) -> int | None:
        """Tokens of the closing path from here, end-of-sequence included (None: not within ``limit``)."""
        steps = 0
        try:
            while steps < limit:
                forced = self.matcher.compute_ff_tokens()  # a run only the grammar decides (a key): one call
                if forced:
                    if not self.matcher.consume_tokens(forced):
                        return None
                    steps += len(forced)
                    continue
                self._fill()
                pick = self._closing_pick()
                if pick is None:
                    return None
                if pick == self.vocabulary.eos_column:
                    return steps + 1
                if not self.matcher.consume_token(int(self.vocabulary.columns[pick])):
                    return None
                steps += 1
            return None
        finally:
            if steps:
                self.matcher.rollback(steps)

    def _time_to_check(self, remaining: int, n_out: int) -> bool:
        return n_out >= self._next_check

    def next_mask(self, remaining: int, n_out: int) -> np.ndarray:
        """Allowed columns for the next token, ``remaining`` tokens (this one included) before max_tokens.

        In closing mode exactly one column is allowed: the closing path's next token.
        """
        if not self.closing and self._time_to_check(remaining, n_out):
            estimate = self.tokens_to_close(min(remaining + CHECK_MARGIN, MAX_CLOSING_PATH))
            self.close_estimate = estimate if estimate is not None else remaining + CHECK_MARGIN
            if estimate is None or remaining <= estimate + CLOSE_MARGIN:
                self.closing = True
            slack = remaining - self.close_estimate - CLOSE_MARGIN
            self._next_check = n_out + min(CHECK_EVERY_FAR, max(1, slack // GROWTH_PER_TOKEN))
        self._fill()
        if self.closing:
            pick = self._closing_pick()
            only = np.zeros(len(self.vocabulary.columns), dtype=bool)
            if pick is None:
                self.failed = True
            else:
                only[pick] = True
            return only
        allowed = self.vocabulary.columns_of(self._bitmask)
        if not allowed.any():
            self.failed = True
        return allowed

    def accept(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            self.failed = True
