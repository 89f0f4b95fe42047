"""Benchmark: what a `model: "auto"` decision costs per request, and how the embedding cut trades it.

Times, in one process and interleaved, routing.services.decide_tier over
held-out prompts of the prompt set (each text new to the process, so every
decision embeds) with the last user turn cut to 32 (shipped), 64, 128 and
256 tokens, against two baselines measured in the same run: the cheap
signals alone (tokenizer and keyword counts, no embedding) and a repeated
prompt (the embedding comes from the per-process memo). Prints p50/p95 in
ms and the ratio of each p50 to the signals-only p50, plus the held-out
accuracy of a classifier trained at each cut (embeddings are cached in
routing/data/prompt_embeddings.npz for the shipped cut only, so other cuts
embed the whole set first: minutes). ``--torch-threads`` sets torch's
intra-op threads for the run (in the gateway that is the process's setting,
TOLLGATE_CPU_ENGINE_THREADS where the CPU engine runs in the web process).

    .venv/bin/python bench/router_decision.py [--samples 200] [--skip-accuracy] [--torch-threads N] [--cuts 32,64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--cuts", default="32,64,128,256")
    args = parser.parse_args()

    import django

    django.setup()
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    from routing import classifier, dataset, embedding, features, services

    records = dataset.load_prompt_set()
    train, held_out = classifier.split(records)
    sample = held_out[:: max(1, len(held_out) // args.samples)][: args.samples]
    embedding.embed_texts(["warm up"], 64)  # load the model once, outside the timings
    services.decide_tier([("user", "warm up")], json_requested=False, tools_requested=False, quality_high=False,
                         policy=services.DEFAULT_POLICY, served_tiers=[1, 2, 3])

    cuts = tuple(int(c) for c in args.cuts.split(","))
    models = {cut: classifier.train(train, cut) for cut in cuts} if not args.skip_accuracy else {}
    timings: dict[str, list[float]] = {"signals only": [], "repeated prompt (memo)": []}
    timings.update({f"decide, cut {cut}": [] for cut in cuts})
    for i, record in enumerate(sample):
        messages = features.record_messages(record)
        t = time.perf_counter()
        signals = features.record_signals(record)
        timings["signals only"].append(time.perf_counter() - t)
        for cut in cuts:
            # A text this process has not embedded at this cut: add the sample index.
            text = f"{features.last_user_text(messages)} #{i}"
            t = time.perf_counter()
            vector = features.feature_matrix([text], [signals], cut)
            (models.get(cut) or classifier.get_classifier()).probabilities(vector)
            timings[f"decide, cut {cut}"].append(time.perf_counter() - t)
        t = time.perf_counter()
        services.decide_tier([("user", "warm up")], json_requested=False, tools_requested=False,
                             quality_high=False, policy=services.DEFAULT_POLICY, served_tiers=[1, 2, 3])
        timings["repeated prompt (memo)"].append(time.perf_counter() - t)

    base = statistics.median(timings["signals only"])
    print(f"torch threads: {torch.get_num_threads()}, samples: {len(sample)}")
    print(f"{'what':<26} {'p50 ms':>8} {'p95 ms':>8} {'x signals':>10} {'held-out acc':>13}")
    for name, values in timings.items():
        cut = int(name.rsplit(" ", 1)[1]) if name.startswith("decide") else None
        accuracy = (f"{classifier.evaluate(models[cut], held_out)['overall']:.3f}" if cut in models else "")
        p50 = statistics.median(values)
        print(f"{name:<26} {p50 * 1000:>8.2f} {percentile(values, 0.95) * 1000:>8.2f} {p50 / base:>10.1f} "
              f"{accuracy:>13}")


if __name__ == "__main__":
    main()
