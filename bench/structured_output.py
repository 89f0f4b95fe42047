"""Benchmark: the structured-output libraries vLLM uses, on the CPU engine's vocabulary.

For llguidance (what the CPU engine uses) and xgrammar (vLLM's other
backend, measured when it is installed: ``pip install --no-deps
xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2``; it is not a project
dependency), on the same 30,522-token uncased WordPiece vocabulary
(continuation texts, as serving/engines/cpu/structured.py gives them):

* compile time of each grammar (json_object, a 5-field schema, a nested
  12-field schema), median of ``--repeats`` fresh compiles, no cache;
* per-token mask time: walks of ``--steps`` tokens, each drawn at random from
  the tokens the mask allows (seeded), median and p99 of the mask fill.

Prints a markdown table and the xgrammar/llguidance ratios.

    .venv/bin/python bench/structured_output.py [--steps 256] [--walks 8] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from serving.engines.cpu.structured import GrammarVocabulary  # noqa: E402
from serving.engines.cpu.tokenizer import SEP_ID, ChatTokenizer  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                   "tier": {"enum": ["mini", "small", "large"]}, "active": {"type": "boolean"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tier", "active", "tags"],
}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "status": {"enum": ["open", "paid", "void"]}, "total": {"type": "number"},
        "currency": {"type": "string", "maxLength": 3}, "notes": {"type": ["string", "null"]},
        "customer": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                                                        "vip": {"type": "boolean"}},
                     "required": ["name", "email"]},
        "lines": {"type": "array", "minItems": 1, "items": {
            "type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1},
                                             "price": {"type": "number"}},
            "required": ["sku", "qty", "price"]}},
    },
    "required": ["id", "status", "total", "currency", "customer", "lines"],
}
GRAMMARS = {"json_object": {"type": "object"}, "5-field schema": PERSON, "nested 12-field schema": ORDER}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


class LlguidanceBackend:
    name = "llguidance"

    def __init__(self, vocabulary: GrammarVocabulary):
        import llguidance
        import llguidance.numpy as lln

        self.llg, self.lln, self.vocabulary = llguidance, lln, vocabulary

    def compile(self, schema: dict):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema)
        matcher = self.llg.LLMatcher(self.vocabulary.lltokenizer, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def walk(self, matcher, steps: int, rng) -> list[float]:
        bitmask = self.lln.allocate_token_bitmask(1, self.vocabulary.size)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.lln.fill_next_token_bitmask(matcher, bitmask)
            times.append(time.perf_counter() - t0)
            token = _draw(bitmask, self.vocabulary.size, rng)
            if token is None or token == SEP_ID or not matcher.consume_token(token):
                break
        return times


class XgrammarBackend:
    name = "xgrammar"

    def __init__(self, vocabulary: GrammarVocabulary, texts: list[str]):
        import xgrammar

        self.xgr = xgrammar
        encoded = [texts[i] if not vocabulary.token_bytes[i].startswith(b"\xff") else "" for i in range(len(texts))]
        info = xgrammar.TokenizerInfo(encoded, xgrammar.VocabType.RAW, vocab_size=len(texts),
                                      stop_token_ids=[SEP_ID])
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.size = len(texts)

    def compile(self, schema: dict):
        return self.xgr.GrammarMatcher(self.compiler.compile_json_schema(json.dumps(schema)))

    def walk(self, matcher, steps: int, rng) -> list[float]:
        bitmask = self.xgr.allocate_token_bitmask(1, self.size)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            times.append(time.perf_counter() - t0)
            token = _draw(bitmask.numpy(), self.size, rng)
            if token is None or token == SEP_ID or not matcher.accept_token(token):
                break
        return times


def _draw(bitmask: np.ndarray, size: int, rng) -> int | None:
    allowed = np.flatnonzero(np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:size])
    allowed = allowed[allowed != SEP_ID] if len(allowed) > 1 else allowed  # walk on while it can
    return int(rng.choice(allowed)) if len(allowed) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--walks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    tokenizer = ChatTokenizer()
    texts = tokenizer.continuation_texts()
    t0 = time.perf_counter()
    vocabulary = GrammarVocabulary(tokenizer, tokenizer.allowed_ids())
    setup = {"llguidance": time.perf_counter() - t0}
    backends = [LlguidanceBackend(vocabulary)]
    try:
        t0 = time.perf_counter()
        backends.append(XgrammarBackend(vocabulary, texts))
        setup["xgrammar"] = time.perf_counter() - t0
    except ImportError:
        print("xgrammar is not installed: llguidance only", file=sys.stderr)

    results: dict[tuple[str, str], dict] = {}
    for label, schema in GRAMMARS.items():
        for backend in backends:
            compiles = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                backend.compile(schema)
                compiles.append(time.perf_counter() - t0)
            masks: list[float] = []
            for walk in range(args.walks):
                masks += backend.walk(backend.compile(schema), args.steps, np.random.default_rng(walk))
            results[(label, backend.name)] = {"compile": statistics.median(compiles), "p50": percentile(masks, 0.5),
                                              "p99": percentile(masks, 0.99), "n": len(masks)}

    print(f"\nvocabulary {tokenizer.vocab_size} tokens; setup (tokenizer tables for the library): "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in setup.items()) + "\n")
    print("| grammar | library | compile ms (median) | mask us p50 | mask us p99 | masks |")
    print("|---|---|---:|---:|---:|---:|")
    for (label, name), r in results.items():
        print(f"| {label} | {name} | {r['compile'] * 1e3:.2f} | {r['p50'] * 1e6:.1f} | {r['p99'] * 1e6:.1f} "
              f"| {r['n']} |")
    if len(backends) > 1:
        print("\n| grammar | compile xgrammar/llguidance | mask p50 xgrammar/llguidance "
              "| mask p99 xgrammar/llguidance |")
        print("|---|---:|---:|---:|")
        for label in GRAMMARS:
            x, g = results[(label, "xgrammar")], results[(label, "llguidance")]
            print(f"| {label} | {x['compile'] / g['compile']:.2f}x | {x['p50'] / g['p50']:.2f}x "
                  f"| {x['p99'] / g['p99']:.2f}x |")


if __name__ == "__main__":
    main()
