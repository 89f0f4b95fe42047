"""Benchmark: semantic cache lookup latency per tenant partition, HNSW graphs vs brute force, same run.

Fills one partition with --sizes entries (default 10k and 100k) of 384-dim
unit vectors (all-MiniLM-L6-v2's shape): clustered, as questions of one
tenant are (2000 topics, noise around each), since uniform random vectors
are the worst case for a graph index and unlike real traffic. Queries are
perturbed copies of stored vectors (a paraphrase of a cached question).
Each method answers the same queries, interleaved one query at a time:

* brute force: numpy matrix-vector product and argpartition (exact; the baseline);
* hnswlib HNSW (what caching.semantic builds: M 16, ef_construction 128, ef 64);
* usearch HNSW (connectivity 16, expansion 128/64).

Reported: build time, p50/p99 lookup in ms, and recall@1 against brute force.

    .venv/bin/python bench/semantic_lookup.py [--sizes 10000 100000] [--queries 2000] [--skip usearch]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DIM = 384
K = 4  # caching.semantic.CANDIDATES


def clustered(n: int, rng) -> np.ndarray:
    centers = rng.standard_normal((2000, DIM)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray):
    def search(q: np.ndarray) -> int:
        scores = vectors @ q
        top = np.argpartition(-scores, K - 1)[:K]
        return int(top[np.argmax(scores[top])])
    return search


def usearch_index(vectors: np.ndarray):
    from usearch.index import Index

    index = Index(ndim=DIM, metric="cos", dtype="f32", connectivity=16, expansion_add=128, expansion_search=64)
    index.add(np.arange(len(vectors)), vectors)
    return lambda q: int(index.search(q, K).keys[0])


def hnswlib_index(vectors: np.ndarray):
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=len(vectors), ef_construction=128, M=16)
    index.add_items(vectors, np.arange(len(vectors)))
    index.set_ef(64)
    return lambda q: int(index.knn_query(q, k=K)[0][0][0])


METHODS = {"brute force (numpy)": brute_force, "hnswlib HNSW": hnswlib_index, "usearch HNSW": usearch_index}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["hnswlib", "usearch"])
    args = parser.parse_args()
    methods = {name: make for name, make in METHODS.items() if not any(s in name for s in args.skip)}
    rng = np.random.default_rng(7)
    print("| entries | method | build s | p50 ms | p99 ms | recall@1 | p99 vs brute force |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        vectors = clustered(n, rng)
        queries = vectors[rng.integers(0, n, args.queries)] + 0.05 * rng.standard_normal((args.queries, DIM)).astype(
            np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        built, builds = {}, {}
        for name, make in methods.items():
            t0 = time.perf_counter()
            built[name] = make(vectors)
            builds[name] = time.perf_counter() - t0
        timings = {name: [] for name in methods}
        answers = {name: [] for name in methods}
        for q in queries:  # interleaved, so machine noise falls on every method alike
            for name, search in built.items():
                t0 = time.perf_counter()
                answers[name].append(search(q))
                timings[name].append(time.perf_counter() - t0)
        truth = np.array(answers["brute force (numpy)"])
        base_p99 = np.percentile(timings["brute force (numpy)"], 99)
        for name in methods:
            ms = np.array(timings[name]) * 1000
            recall = float(np.mean(np.array(answers[name]) == truth))
            p99 = np.percentile(ms, 99)
            print(f"| {n:,} | {name} | {builds[name]:.1f} | {np.percentile(ms, 50):.3f} | {p99:.3f} | {recall:.3f} | "
                  f"{p99 / (base_p99 * 1000):.2f}x |")


if __name__ == "__main__":
    main()
