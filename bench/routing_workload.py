"""The evaluation workload for bench/routing_eval.py: a reproducible mix of chat requests, each labelled
with the smallest model tier that serves it well.

Not the router's training data: it draws only the held-out templates of routing/dataset.py (2 and 5 of
every kind, whose phrasing the classifier never trained on), with a seed of its own, and adds templates
of its own where the evaluation needs something the prompt set lacks:

* RAG prompts with **oversized** context (16-26 retrieved chunks, well past a 512-token context budget,
  so keeping only the relevant chunks matters), each chunk its own paragraph and the question last (the
  shape the context-selection step reads);
* JSON tasks with ``response_format`` ``json_schema`` (a schema per task) next to the set's
  ``json_object`` ones.

About 15% of the requests (``REPEAT_SHARE``) ask again something asked earlier, at least
``REPEAT_MIN_GAP`` requests later: half word for word, half paraphrased (the same task under another
opener and closer), which is what a response cache can answer.

    .venv/bin/python bench/routing_workload.py [--requests 600] [--out bench/data/routing_workload.jsonl]

The same seed and size write the same file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from routing import dataset  # noqa: E402
from routing.dataset import CITIES, CLOSERS, OPENERS, PRODUCTS, _chunks  # noqa: E402

SEED = "routing-eval-2026-12"
REQUESTS = 600
REPEAT_SHARE = 0.15
REPEAT_MIN_GAP = 24  # a repeat comes this many requests after its original at least, so it is not in flight
OUT = ROOT / "bench" / "data" / "routing_workload.jsonl"
# Output length per request: small, so the whole evaluation fits a small CPU box; JSON needs room to close.
MAX_TOKENS = 24
JSON_MAX_TOKENS = 48


def _oversized_chunks(r: random.Random) -> str:
    # One paragraph per chunk ("\n\n"), unlike the prompt set's single-newline chunks: the context step
    # ranks paragraphs.
    return "\n\n".join(_chunks(r, 1).replace("[doc 1]", f"[doc {i}]") for i in range(1, r.randint(16, 26) + 1))


RAG_OVERSIZED = [
    lambda r: f"Retrieved passages:\n\n{_oversized_chunks(r)}\n\nFrom the passages only: what is the return "
              f"window for the {r.choice(PRODUCTS)}?",
    lambda r: f"{_oversized_chunks(r)}\n\nUsing the documents above, how long does standard shipping to "
              f"{r.choice(CITIES)} take?",
    lambda r: f"Search results for the support agent:\n\n{_oversized_chunks(r)}\n\nAnswer with the doc number: "
              f"how many seats does the premium plan include?",
    lambda r: f"Knowledge base:\n\n{_oversized_chunks(r)}\n\nWhen does the store in {r.choice(CITIES)} close on "
              f"weekdays?",
]

PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
                 "required": ["name", "city"], "additionalProperties": False}
TICKET_SCHEMA = {"type": "object", "properties": {
    "priority": {"type": "string", "enum": ["low", "medium", "high"]}, "summary": {"type": "string"}},
    "required": ["priority", "summary"], "additionalProperties": False}

JSON_SCHEMA_TASKS = [
    (lambda r: f"Return the person and their city as JSON: {dataset._person(r)} moved to {r.choice(CITIES)} "
               f"last {r.choice(dataset.MONTHS)}.", "person", PERSON_SCHEMA),
    (lambda r: f"Triage this support ticket into the schema: {r.choice(dataset.TICKETS)}", "ticket", TICKET_SCHEMA),
]


def _core_and_format(kind: str, index: int, r: random.Random) -> tuple[list[dict], dict | None]:
    """One task: its messages (the last user turn without opener or closer) and its response_format."""
    if kind == "rag_long_context":
        return [{"role": "user", "content": RAG_OVERSIZED[index](r)}], None
    if kind == "json_task" and index >= 100:
        build, name, schema = JSON_SCHEMA_TASKS[index - 100]
        return ([{"role": "user", "content": build(r)}],
                {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}})
    _tier, builds = dataset.TEMPLATES[kind]
    record = builds[index](r)
    response_format = {"type": record["response_format"]} if record.get("response_format") else None
    return record["messages"], response_format


def _templates() -> list[tuple[str, int, int]]:
    """(kind, tier, template index) of every template the workload draws from."""
    out = []
    for kind, (tier, _builds) in dataset.TEMPLATES.items():
        if kind == "rag_long_context":
            indexes = list(range(len(RAG_OVERSIZED)))
        elif kind == "json_task":
            indexes = list(dataset.HELD_OUT_TEMPLATES) + [100 + i for i in range(len(JSON_SCHEMA_TASKS))]
        else:
            indexes = list(dataset.HELD_OUT_TEMPLATES)
        out += [(kind, tier, i) for i in indexes]
    return out


def _wrap(messages: list[dict], r: random.Random) -> list[dict]:
    messages = [dict(m) for m in messages]
    messages[-1]["content"] = f"{r.choice(OPENERS)}{messages[-1]['content']}{r.choice(CLOSERS)}"
    return messages


def generate(requests: int = REQUESTS, seed: str = SEED) -> list[dict]:
    r = random.Random(seed)
    kinds = list(dataset.TEMPLATES)
    by_kind = {k: [t for t in _templates() if t[0] == k] for k in kinds}
    unique = requests - round(requests * REPEAT_SHARE)
    tasks = []
    for n in range(unique):
        kind = kinds[n % len(kinds)]  # every kind equally often
        kind, tier, index = r.choice(by_kind[kind])
        core, response_format = _core_and_format(kind, index, r)
        tasks.append({"kind": kind, "tier": tier, "template": f"{kind}/{index}", "core": core,
                      "response_format": response_format})
    r.shuffle(tasks)
    records = [{**t, "messages": _wrap(t["core"], r)} for t in tasks]
    for n in range(requests - unique):
        # Insert a repeat of an earlier request at a random later position, at least REPEAT_MIN_GAP after it.
        at = r.randint(REPEAT_MIN_GAP + 1, len(records))
        original_at = r.randint(0, at - REPEAT_MIN_GAP - 1)
        original = records[original_at]
        while "_original" in original:  # repeat an original, never a repeat
            original_at = r.randint(0, at - REPEAT_MIN_GAP - 1)
            original = records[original_at]
        exact = n % 2 == 0
        messages = original["messages"] if exact else _wrap(original["core"], r)
        records.insert(at, {**original, "messages": messages, "_original": original, "_exact": exact})
    out = []
    for i, rec in enumerate(records):  # ids by position, after the repeats are in
        rec["id"] = f"w{i:04d}"
    for rec in records:
        original = rec.pop("_original", None)
        exact = rec.pop("_exact", None)
        out.append({
            "id": rec["id"], "kind": rec["kind"], "tier": rec["tier"], "template": rec["template"],
            "repeat": None if original is None else ("exact" if exact else "paraphrase"),
            "repeat_of": None if original is None else original["id"],
            "messages": rec["messages"], "response_format": rec["response_format"],
            "max_tokens": JSON_MAX_TOKENS if rec["response_format"] else MAX_TOKENS,
        })
    return out


def write(path: Path = OUT, requests: int = REQUESTS, seed: str = SEED) -> list[dict]:
    records = generate(requests, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return records


def load(path: Path = OUT) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=REQUESTS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    records = write(args.out, args.requests)
    kinds: dict[str, int] = {}
    for rec in records:
        kinds[rec["kind"]] = kinds.get(rec["kind"], 0) + 1
    repeats = sum(1 for rec in records if rec["repeat"])
    print(f"wrote {len(records)} requests to {args.out} ({repeats} repeats): "
          + ", ".join(f"{k} {v}" for k, v in kinds.items()))


if __name__ == "__main__":
    main()
