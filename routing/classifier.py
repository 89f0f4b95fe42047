"""The tier classifier: scikit-learn logistic regression over the router's features.

Trained by ``manage.py train_router`` on the train split of the prompt set
and stored as plain JSON (``routing/data/router_classifier.json``: the
model's arrays), not a pickle: a reviewer can read and diff it, and loading
it runs no code. Loaded once per process and kept.

The features are not standardised: the signals (log tokens, turns, keyword
hits) are on a larger scale than the unit-length embedding's components, so
the model leans on them first and uses the embedding to tell apart what
they cannot. On the held-out split that does better than standardising
every column (0.93 against 0.85 when measured), which lets the 384
embedding columns drown the six signals. (Both at a 64-token cut; the shipped
32-token cut does better still: docs/routing.md.)

The prompt set's embeddings are kept in ``routing/data/prompt_embeddings.npz``
(float16, keyed by a hash of the text and the cut), so retraining and the
accuracy test embed only prompts that are new or changed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from . import dataset, embedding, features

CLASSIFIER_PATH = Path(__file__).parent / "data" / "router_classifier.json"
EMBEDDINGS_PATH = Path(__file__).parent / "data" / "prompt_embeddings.npz"
DEFAULT_EMBED_TOKENS = 32


@dataclass(frozen=True)
class TierClassifier:
    model: LogisticRegression
    embed_tokens: int

    @property
    def tiers(self) -> tuple[int, ...]:
        return tuple(int(t) for t in self.model.classes_)

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(rows)

    def predict(self, last_text: str, signals: features.Signals) -> tuple[int, float]:
        """The most likely tier and its probability."""
        row = features.feature_matrix([last_text], [signals], self.embed_tokens)
        probabilities = self.probabilities(row)[0]
        best = int(np.argmax(probabilities))
        return self.tiers[best], float(probabilities[best])


def _text_key(text: str, embed_tokens: int) -> str:
    return hashlib.sha1(f"{embed_tokens}\n{text}".encode()).hexdigest()


def record_rows(records: list[dict], embed_tokens: int, *, cache_path: Path | None = EMBEDDINGS_PATH,
                update_cache: bool = False) -> np.ndarray:
    """Feature rows for prompt-set records; embeddings from the cache file where it has them."""
    texts = [features.last_user_text(features.record_messages(r)) for r in records]
    keys = [_text_key(t, embed_tokens) for t in texts]
    cached: dict[str, np.ndarray] = {}
    if cache_path is not None and cache_path.exists():
        with np.load(cache_path) as stored:
            cached = dict(zip(stored["keys"].tolist(), stored["vectors"]))
    missing = sorted({i for i, key in enumerate(keys) if key not in cached}, key=lambda i: keys[i])
    if missing:
        fresh = embedding.embed_texts([texts[i] for i in missing], embed_tokens)
        for i, vector in zip(missing, fresh):
            cached[keys[i]] = vector.astype(np.float16)
    if update_cache and cache_path is not None and (missing or len(cached) != len(set(keys))):
        kept = sorted(set(keys))
        np.savez_compressed(cache_path, keys=np.asarray(kept), vectors=np.stack([cached[k] for k in kept]))
    vectors = np.stack([cached[k].astype(np.float32) for k in keys])
    extra = np.asarray([features.record_signals(r).vector() for r in records], dtype=np.float32)
    return np.hstack([vectors, extra])


def train(records: list[dict], embed_tokens: int = DEFAULT_EMBED_TOKENS, c: float = 1.0, *,
          update_cache: bool = False) -> TierClassifier:
    rows = record_rows(records, embed_tokens, update_cache=update_cache)
    labels = np.asarray([r["tier"] for r in records])
    model = LogisticRegression(C=c, max_iter=3000)
    model.fit(rows, labels)
    return TierClassifier(model, embed_tokens)


def evaluate(classifier: TierClassifier, records: list[dict], *, update_cache: bool = False) -> dict:
    """Accuracy per tier and overall on ``records``: {"overall": float, "per_tier": {tier: (right, total)}}."""
    rows = record_rows(records, classifier.embed_tokens, update_cache=update_cache)
    predicted = np.asarray(classifier.tiers)[classifier.probabilities(rows).argmax(axis=1)]
    per_tier: dict[int, list[int]] = {}
    for record, tier in zip(records, predicted):
        counts = per_tier.setdefault(record["tier"], [0, 0])
        counts[0] += int(tier == record["tier"])
        counts[1] += 1
    right = sum(c[0] for c in per_tier.values())
    return {"overall": right / len(records) if records else 0.0,
            "per_tier": {t: tuple(c) for t, c in sorted(per_tier.items())}}


def split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    return [r for r in records if r["split"] == "train"], [r for r in records if r["split"] == "heldout"]


def save(classifier: TierClassifier, path: Path = CLASSIFIER_PATH, **metadata) -> None:
    model = classifier.model
    payload = {
        "embed_tokens": classifier.embed_tokens,
        "signals": list(features.SIGNAL_NAMES),
        "classes": [int(t) for t in model.classes_],
        "coef": model.coef_.round(7).tolist(),
        "intercept": model.intercept_.round(7).tolist(),
        **metadata,
    }
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")


def load(path: Path = CLASSIFIER_PATH) -> TierClassifier:
    payload = json.loads(path.read_text(encoding="utf-8"))
    model = LogisticRegression()
    model.classes_ = np.asarray(payload["classes"])
    model.coef_ = np.asarray(payload["coef"])
    model.intercept_ = np.asarray(payload["intercept"])
    model.n_features_in_ = model.coef_.shape[1]
    return TierClassifier(model, int(payload["embed_tokens"]))


_loaded: TierClassifier | None = None
_loaded_lock = threading.Lock()


def get_classifier() -> TierClassifier:
    """The stored classifier (TOLLGATE_ROUTER_CLASSIFIER, else the one in the repository), loaded once."""
    global _loaded
    if _loaded is None:
        with _loaded_lock:
            if _loaded is None:
                from django.conf import settings

                _loaded = load(Path(settings.TOLLGATE_ROUTER_CLASSIFIER or CLASSIFIER_PATH))
    return _loaded


def forget_classifier() -> None:
    global _loaded
    _loaded = None


def train_on_prompt_set(embed_tokens: int = DEFAULT_EMBED_TOKENS, *, update_cache: bool = False
                        ) -> tuple[TierClassifier, dict]:
    """Train on the train split, measure on the held-out split (whose templates training never saw)."""
    records = dataset.load_prompt_set()
    if update_cache:
        record_rows(records, embed_tokens, update_cache=True)  # one cache file for both splits
    train_records, held_out = split(records)
    classifier = train(train_records, embed_tokens)
    return classifier, evaluate(classifier, held_out)
