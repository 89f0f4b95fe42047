"""Benchmark: all-MiniLM-L6-v2 forward passes, core.minilm's plain-torch encoder against transformers' BertModel.

Same weights, same token ids, same torch threads, interleaved in one run:
per shape (texts × tokens), the median wall time of ``--repeats`` calls of
each, and their ratio. The shapes are what the gateway embeds: one short
question (the semantic cache, one request at a time), 32 of them batched
(32 concurrent requests), and a batch of longer documents (/v1/embeddings).

    .venv/bin/python bench/embeddings.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.minilm import MiniLMEncoder, model_path  # noqa: E402

SHAPES = [(1, 14), (32, 16), (8, 128)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import BertModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    reference = BertModel.from_pretrained(model_path(), local_files_only=True).eval()
    encoder = MiniLMEncoder()
    generator = torch.Generator().manual_seed(0)

    def run_reference(ids, mask):
        with torch.inference_mode():
            reference(input_ids=ids, attention_mask=mask)

    def run_ours(ids, mask):
        encoder.hidden_states(ids, mask)

    print(f"torch threads {torch.get_num_threads()}, median of {args.repeats} calls each, interleaved\n")
    print("| texts × tokens | transformers BertModel ms | core.minilm ms | speed-up |")
    print("|---|---:|---:|---:|")
    for texts, tokens in SHAPES:
        ids = torch.randint(1000, 29000, (texts, tokens), generator=generator)
        mask = torch.ones_like(ids)
        timings = {"ref": [], "ours": []}
        for fn in (run_reference, run_ours):  # warm-up
            fn(ids, mask)
        for _ in range(args.repeats):
            for name, fn in (("ref", run_reference), ("ours", run_ours)):
                t0 = time.perf_counter()
                fn(ids, mask)
                timings[name].append(time.perf_counter() - t0)
        ref, ours = statistics.median(timings["ref"]) * 1000, statistics.median(timings["ours"]) * 1000
        print(f"| {texts} × {tokens} | {ref:.2f} | {ours:.2f} | {ref / ours:.2f}x |")


if __name__ == "__main__":
    main()
