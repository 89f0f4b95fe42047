"""Benchmark: how often the semantic cache answers a paraphrase, and how often it answers the wrong question.

The data set is bench/data/paraphrases.json: support questions, each with
paraphrases that deserve its answer and near-misses that need another one
(the opposite action, a sibling topic, another number). Every cached question
sits in one tenant partition, so a query can also land on another group's
question. Every paraphrase and near-miss is then looked up:

* with plain cosine thresholds (what a semantic cache without verification
  does): the nearest cached question is served when it scores above the threshold;
* with Tollgate's verified lookup (caching.semantic's candidates, then
  caching.verify.same_question): the nearest verified candidate is served.

A served answer is right only for a paraphrase that found its own group's
question. Reported: paraphrase hit rate, wrong answers (of all served hits,
and of all lookups), and the generation cost with and without the cache
(every lookup priced as one tollgate-small answer of --prompt/--output
tokens; each lookup also pays its question's embedding).

    .venv/bin/python bench/semantic_precision.py [--prompt-tokens 40] [--output-tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from decimal import Decimal

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
THRESHOLDS = (0.80, 0.85, 0.90, 0.95)
# Catalog prices of the test catalog (tests/conftest.py): tollgate-small and the embedding model, per 1M tokens.
SMALL_IN, SMALL_OUT, EMBED_IN = Decimal("0.50"), Decimal("1.50"), Decimal("0.02")


def embed(texts: list[str]) -> tuple[np.ndarray, int]:
    from serving.engines.embeddings import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    result = asyncio.run(embedder.embed(texts))
    return np.asarray(result.vectors, dtype=np.float32), result.prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt-tokens", type=int, default=40)
    parser.add_argument("--output-tokens", type=int, default=200)
    parser.add_argument("--data", default="paraphrases.json",
                        help="a file in bench/data/ (paraphrases_holdout.json: groups never used to tune the rules)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
    import django

    django.setup()
    from caching.semantic import CANDIDATES
    from caching.verify import same_question

    groups = json.load(open(os.path.join(DATA_DIR, args.data)))["groups"]
    cached = [g["q"] for g in groups]
    queries = [(p, i, True) for i, g in enumerate(groups) for p in g["paraphrases"]]
    queries += [(n, i, False) for i, g in enumerate(groups) for n in g["near_misses"]]
    vectors, embed_tokens = embed(cached + [q for q, _, _ in queries])
    index, asked = vectors[:len(cached)], vectors[len(cached):]
    paraphrases = sum(1 for _, _, para in queries if para)

    def run(decide, candidates: int) -> dict:
        """Serve the first of the ``candidates`` nearest cached questions that ``decide`` accepts."""
        right = wrong = 0
        for (text, group, para), vector in zip(queries, asked):
            scores = index @ vector
            nearest = np.argsort(-scores)[:candidates]
            served = next((int(j) for j in nearest if decide(text, int(j), float(scores[j]))), None)
            if served is None:
                continue
            if para and served == group:
                right += 1
            else:
                wrong += 1
        return {"right": right, "wrong": wrong}

    # A plain threshold serves the nearest question when it scores high enough; the verified lookup
    # checks the nearest few (the nearest may be a near-miss, a farther one the real match).
    rows = [(f"plain cosine >= {t:.2f}", run(lambda text, j, s, t=t: s >= t, 1)) for t in THRESHOLDS]
    rows.append(("verified (Tollgate)", run(lambda text, j, s: same_question(text, cached[j], s).same, CANDIDATES)))

    per_answer = (SMALL_IN * args.prompt_tokens + SMALL_OUT * args.output_tokens) / Decimal(1_000_000)
    lookups = len(queries)
    embedding_cost = EMBED_IN * Decimal(embed_tokens) / Decimal(1_000_000) * lookups / (lookups + len(cached))
    no_cache = per_answer * lookups
    print(f"{len(groups)} cached questions, {paraphrases} paraphrases, {lookups - paraphrases} near-misses; "
          f"one answer costs ${per_answer:.6f} ({args.prompt_tokens} in / {args.output_tokens} out, tollgate-small)")
    print("| lookup | paraphrase hit rate | wrong answers | wrong, of hits | wrong, of lookups | cost with cache "
          "| cost without | saved |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in rows:
        hits = result["right"] + result["wrong"]
        with_cache = per_answer * (lookups - hits) + embedding_cost
        print(f"| {name} | {result['right'] / paraphrases:.1%} | {result['wrong']} | "
              f"{(result['wrong'] / hits if hits else 0):.1%} | {result['wrong'] / lookups:.1%} | "
              f"${with_cache:.4f} | ${no_cache:.4f} | {1 - with_cache / no_cache:.1%} |")


if __name__ == "__main__":
    main()
