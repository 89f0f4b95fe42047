"""Benchmark: what routing, escalation, token optimization and caching save, against perfect routing.

Replays the labelled workload of bench/routing_workload.py (600 requests over 14 task kinds, each with
the smallest sufficient tier; about 15% repeated or paraphrased) through the gateway with the official
``openai`` client, once per policy:

* ``always-large``: every request names ``tollgate-large`` (tier 3);
* ``always-mini``: every request names ``tollgate-mini`` (tier 1);
* ``label-perfect``: every request names the model of its labelled tier (what a perfect router does);
* ``router only``: ``model: "auto"``, a routing policy with ``escalation_limit`` 0;
* ``full``: ``model: "auto"``, the policy with escalation, token optimization and the response caches.

Every policy but the full one sends ``X-Tollgate-Optimize: off`` and ``Cache-Control: no-store``, so
each measures one thing. Each policy is a feature of its own (``X-Feature``) with its own routing
policy, so the ledger can be summed per policy and the caches of one never answer another.

Starts Tollgate the way bench/gateway_overhead.py does: ``manage.py serve`` on a free port, a database of
its own (dropped and created again, so every run starts with empty caches), embedded ClickHouse in a
temporary folder, the in-process CPU engine (``TOLLGATE_ENGINE=cpu``: tollgate-mini, -small, -large at the
catalog prices of tests/conftest.py, tiers 1, 2, 3). The CPU models' text has no meaning, so quality is
what can be measured honestly: the share of requests served at least at their labelled tier
(``X-Tollgate-Model``'s tier) and the validators' verdict (``X-Tollgate-Validation``).

    .venv/bin/python bench/routing_eval.py                 # the whole workload (bench/data/routing_workload.jsonl)
    .venv/bin/python bench/routing_eval.py --requests 40   # a smoke run on the first 40 requests

Needs PostgreSQL and Redis (``--database-url``, ``--redis-url``; the Redis database is flushed first).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import routing_workload  # noqa: E402
from bench.gateway_overhead import free_port, wait_until_up  # noqa: E402

TIER_MODEL = {1: "tollgate-mini", 2: "tollgate-small", 3: "tollgate-large"}
MODEL_TIER = {m: t for t, m in TIER_MODEL.items()}
POLICIES = ["always-large", "always-mini", "label-perfect", "router-only", "full"]
ISOLATED = {"X-Tollgate-Optimize": "off", "Cache-Control": "no-store"}
TARGET_SUFFICIENT = 0.95

# The full policy's routing policy (a feature's RoutingPolicy row): escalation one tier on a failed check
# (JSON conformance, unsafe content), token optimization, and the caches. Two settings differ from a new
# policy's defaults, for reasons measured on this workload (docs/benchmarks.md):
# * default_tier 3 (not 2): the tier used when the classifier's probability is under 0.5. The router's
#   misses on tasks that need tier 3 (math, high-risk questions) are almost all such low-confidence
#   decisions, so an unsure router should fall back to the strongest tier, not the middle one;
# * context_token_budget 1024 (the gateway's TOLLGATE_CONTEXT_BUDGET_TOKENS default, not 512): context
#   selection runs before routing, so a budget under the longest contract (about 950 tokens) cut the
#   documents of long-document analysis and the router then sent them to tier 2.
# No log-probability thresholds: the CPU models' token probabilities mean nothing, so a bar would escalate
# at random. --full-policy overrides any field.
FULL_POLICY_DEFAULTS = {
    "escalation_limit": 1, "validate_json": True, "check_unsafe_content": True, "escalate_on_truncation": False,
    "logprob_mean_threshold": None, "logprob_min_threshold": None, "min_tier": 1, "default_tier": 3,
    "classifier_min_confidence": 0.5, "dedupe_system_prompts": True, "compact_tool_output": True,
    "context_token_budget": 1024, "history_token_budget": 1536,
}

SETUP = """
import json
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from metering.models import CatalogModel, Price
from routing.models import RoutingPolicy
from tenants.models import Feature, Organization
from tenants.services import issue_api_key

since = timezone.now() - timedelta(days=365)
prices = {{"tollgate-mini": ("0.10", "0.01", "0.40"), "tollgate-small": ("0.50", "0.05", "1.50"),
          "tollgate-large": ("3.00", "0.30", "15.00"), "all-minilm-l6-v2": ("0.02", "0.02", "0")}}
for name, (p_in, p_cached, p_out) in prices.items():
    tier = {{"tollgate-mini": 1, "tollgate-small": 2, "tollgate-large": 3}}.get(name, 1)
    model = CatalogModel.objects.create(name=name, tier=tier,
                                        context_window=256 if name == "all-minilm-l6-v2" else 2048)
    Price.objects.create(model=model, effective_from=since, input_per_mtok=Decimal(p_in),
                         cached_input_per_mtok=Decimal(p_cached), output_per_mtok=Decimal(p_out))
org = Organization.objects.create(slug="eval", name="Routing evaluation")
features = {{slug: Feature.objects.create(organization=org, slug=slug) for slug in {policies!r} + ["warmup"]}}
RoutingPolicy.objects.create(organization=org, feature=features["router-only"], escalation_limit=0,
                             context_token_budget=None, history_token_budget=None)
RoutingPolicy.objects.create(organization=org, feature=features["full"], **json.loads({full!r}))
print("KEY=" + issue_api_key(org, "eval key", default_feature=features["always-large"]).plaintext)
"""

LEDGER = """
import json
from django.db.models import Count, Sum
from metering.models import UsageRecord
rows = (UsageRecord.objects.filter(organization__slug="eval").values("feature")
        .annotate(cost=Sum("cost_total"), escalation=Sum("cost_escalation"), input=Sum("input_tokens"),
                  output=Sum("output_tokens"), saved=Sum("tokens_saved"), rows=Count("event_id")))
print("LEDGER=" + json.dumps({r["feature"]: {k: str(v) for k, v in r.items()} for r in rows}))
kinds = (UsageRecord.objects.filter(organization__slug="eval").values("feature", "attempt_kind")
         .annotate(n=Count("event_id"), cost=Sum("cost_total")))
print("KINDS=" + json.dumps([{k: str(v) for k, v in r.items()} for r in kinds]))
# The classifier's probability per routed request (the same on every attempt), for the per-kind analysis.
scores = (UsageRecord.objects.filter(organization__slug="eval", model_requested="auto", route_score__isnull=False)
          .values_list("request_id", "route_score"))
print("SCORES=" + json.dumps(dict(scores)))
"""


def prepare(database_url: str, redis_url: str, env: dict, full_policy: dict) -> str:
    import psycopg
    import redis

    base, name = database_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(redis_url).flushdb()  # the exact cache and the summaries live there
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = shell(env, SETUP.format(policies=POLICIES, full=json.dumps(full_policy)))
    return out["KEY"]


def shell(env: dict, code: str) -> dict:
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and line.split("=", 1)[0].isupper())


def model_for(policy: str, task: dict) -> str:
    return {"always-large": "tollgate-large", "always-mini": "tollgate-mini",
            "label-perfect": TIER_MODEL[task["tier"]]}.get(policy, "auto")


async def replay(client: openai.AsyncOpenAI, policy: str, tasks: list[dict], concurrency: int) -> list[dict]:
    """Every task once under the policy, `concurrency` clients in workload order; one result per task."""
    results: list[dict] = [{} for _ in tasks]
    queue = collections.deque(enumerate(tasks))
    headers = {"X-Feature": policy, **({} if policy == "full" else ISOLATED)}

    async def worker():
        while queue:
            i, task = queue.popleft()
            kwargs = {"response_format": task["response_format"]} if task["response_format"] else {}
            t0 = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model_for(policy, task), messages=task["messages"], max_tokens=task["max_tokens"],
                    temperature=0, extra_headers=headers, **kwargs)
                answer = raw.parse()
                h = raw.headers
                results[i] = {
                    "ok": True, "latency": time.perf_counter() - t0, "model": h.get("x-tollgate-model"),
                    "request_id": h.get("x-request-id"),
                    "cost": Decimal(h.get("x-tollgate-cost", "0")), "attempts": int(h.get("x-tollgate-attempts", "1")),
                    "escalated": h.get("x-tollgate-escalated"), "validation": h.get("x-tollgate-validation"),
                    "cache": h.get("x-tollgate-cache"), "route": h.get("x-tollgate-route"),
                    "input": answer.usage.prompt_tokens if answer.usage else 0,
                    "output": answer.usage.completion_tokens if answer.usage else 0,
                }
            except openai.APIStatusError as exc:
                results[i] = {"ok": False, "latency": time.perf_counter() - t0, "error": f"{exc.status_code}",
                              "detail": str(exc)[:200]}
            except openai.APIConnectionError as exc:  # the server dropped the connection: an error, counted
                results[i] = {"ok": False, "latency": time.perf_counter() - t0, "error": "connection",
                              "detail": str(exc)[:200]}

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def summarize(tasks: list[dict], results: list[dict]) -> dict:
    ok = [(t, r) for t, r in zip(tasks, results) if r.get("ok")]
    n = len(tasks)
    validated = [r for _, r in ok if r["validation"]]
    lat = sorted(r["latency"] for r in results)
    return {
        "requests": n, "errors": n - len(ok),
        "error_kinds": collections.Counter(r["error"] for r in results if not r.get("ok")),
        "cost": sum((r["cost"] for _, r in ok), Decimal(0)),
        "input": sum(r["input"] for _, r in ok), "output": sum(r["output"] for _, r in ok),
        "sufficient": sum(1 for t, r in ok if MODEL_TIER.get(r["model"], 0) >= t["tier"]) / n,
        "validated": len(validated),
        "passed": sum(1 for r in validated if r["validation"] == "passed"),
        "escalated": sum(1 for _, r in ok if r["escalated"]) / n,
        "attempts": sum(r["attempts"] for _, r in ok) / max(1, len(ok)),
        "cache_hits": sum(1 for _, r in ok if r["cache"] == "hit") / n,
        "p50": statistics.median(lat) * 1000 if lat else 0.0,
    }


def by_kind(tasks: list[dict], results: list[dict]) -> dict[str, dict]:
    """Per task kind: requests, share at a sufficient tier, tiers served, escalations, cost."""
    out: dict[str, dict] = {}
    for t, r in zip(tasks, results):
        k = out.setdefault(t["kind"], {"tier": t["tier"], "n": 0, "sufficient": 0, "served": collections.Counter(),
                                       "escalated": 0, "cost": Decimal(0), "hits": 0})
        k["n"] += 1
        if r.get("ok"):
            tier = MODEL_TIER.get(r["model"], 0)
            k["served"][tier] += 1
            k["sufficient"] += tier >= t["tier"]
            k["escalated"] += bool(r["escalated"])
            k["cost"] += r["cost"]
            k["hits"] += r["cache"] == "hit"
    return out


@contextlib.contextmanager
def gateway(env: dict, tmp: str, name: str):
    port = free_port()
    log = open(f"{tmp}/serve-{name}.log", "w")  # the server's log, kept out of the table
    proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def run_policy(base_url: str, key: str, policy: str, tasks: list[dict], concurrency: int) -> list[dict]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120,
                                http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency),
                                                              timeout=120))
    # Warm-up on a feature of its own: loads the engine's models, the classifier and the embedding model,
    # so the measured requests do not pay for them.
    for model in ("tollgate-mini", "tollgate-small", "tollgate-large", "auto"):
        await client.chat.completions.create(model=model, max_tokens=4, messages=[
            {"role": "user", "content": f"warm up {policy}"}], extra_headers={"X-Feature": "warmup", **ISOLATED})
    t0 = time.perf_counter()
    results = await replay(client, policy, tasks, concurrency)
    print(f"{policy}: {len(tasks)} requests in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    await client.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=0, help="replay only the first N requests (0: all)")
    ap.add_argument("--workload", type=Path, default=routing_workload.OUT,
                    help="the JSONL workload (written by bench/routing_workload.py if missing)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--full-policy", default="{}",
                    help="JSON overrides of the full policy's RoutingPolicy fields, e.g. '{\"escalation_limit\": 2}'")
    ap.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench_routing")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--json-out", type=Path, help="also write every result here")
    args = ap.parse_args()

    if not args.workload.exists():
        routing_workload.write(args.workload)
    tasks = routing_workload.load(args.workload)
    if args.requests:
        tasks = tasks[:args.requests]
    full_policy = {**FULL_POLICY_DEFAULTS, **json.loads(args.full_policy)}
    policies = [p for p in args.policies.split(",") if p]

    tmp = tempfile.mkdtemp(prefix="tollgate-routing-eval-")
    env = dict(os.environ, DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
               CLICKHOUSE_DSN=f"chdb:///{tmp}/ch", TOLLGATE_VAR_DIR=f"{tmp}/var", TOLLGATE_ENGINE="cpu",
               TOLLGATE_INPROCESS_SHIPPER="true", UVICORN_LOG_LEVEL="warning", DEBUG="false")
    env.pop("CELERY_BROKER_URL", None)
    key = prepare(args.database_url, args.redis_url, env, full_policy)
    all_results: dict[str, list[dict]] = {}
    for policy in policies:
        # A fresh gateway process per policy: the CPU engine keeps a prefix cache (billed at the cached
        # input price), and a policy must not be billed less for prompts an earlier policy already sent.
        with gateway(env, tmp, policy) as base_url:
            all_results[policy] = asyncio.run(run_policy(base_url, key, policy, tasks, args.concurrency))
        if args.json_out:  # after every policy, so a later failure keeps what was measured
            args.json_out.write_text(json.dumps({p: [{k: str(v) if isinstance(v, Decimal) else v
                                                      for k, v in r.items()} for r in rs]
                                                 for p, rs in all_results.items()}, indent=1))
    ledger_out = shell(env, LEDGER)

    ledger = json.loads(ledger_out["LEDGER"])
    kinds = json.loads(ledger_out["KINDS"])
    report(tasks, policies, all_results, ledger, kinds, full_policy, args)
    if args.json_out:
        scores = json.loads(ledger_out["SCORES"])
        args.json_out.write_text(json.dumps({"scores": scores, **{
            p: [{k: str(v) if isinstance(v, Decimal) else v for k, v in r.items()} for r in rs]
            for p, rs in all_results.items()}}, indent=1))


def report(tasks, policies, all_results, ledger, kinds, full_policy, args) -> None:
    stats = {p: summarize(tasks, all_results[p]) for p in policies}
    per_k = Decimal(1000) / len(tasks)
    tiers = collections.Counter(t["tier"] for t in tasks)
    repeats = sum(1 for t in tasks if t["repeat"])
    print(f"\n{len(tasks)} requests ({', '.join(f'tier {k}: {v}' for k, v in sorted(tiers.items()))}; "
          f"{repeats} repeated or paraphrased), {args.concurrency} concurrent clients, cpus={os.cpu_count()}")
    print(f"full policy: {json.dumps(full_policy)}\n")
    print("| policy | cost / 1k requests | vs always-large | vs label-perfect | ledger / 1k (rows) | tokens in | "
          "tokens out | at sufficient tier | validator pass | escalated | attempts / request | cache hits | "
          "p50 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    large = stats.get("always-large", {}).get("cost")
    perfect = stats.get("label-perfect", {}).get("cost")
    for p in policies:
        s = stats[p]
        led = ledger.get(p, {})
        ratio = lambda base: f"{s['cost'] / base:.3f}" if base else "–"  # noqa: E731
        passed = f"{s['passed'] / s['validated']:.1%} of {s['validated']}" if s["validated"] else "–"
        errs = f"{s['errors']}" + (f" ({dict(s['error_kinds'])})" if s["errors"] else "")
        print(f"| {p} | ${s['cost'] * per_k:.4f} | {ratio(large)} | {ratio(perfect)} | "
              f"${Decimal(led.get('cost', '0')) * per_k:.4f} ({led.get('rows', 0)}) | {s['input']:,} | "
              f"{s['output']:,} | {s['sufficient']:.1%} | {passed} | {s['escalated']:.1%} | {s['attempts']:.2f} | "
              f"{s['cache_hits']:.1%} | {s['p50']:.0f} | {errs} |")

    mismatched = [p for p in policies if Decimal(ledger.get(p, {}).get("cost", "0")) != stats[p]["cost"]]
    print(f"\nX-Tollgate-Cost summed = ledger cost_total per policy: "
          f"{'yes, every policy' if not mismatched else 'NO for ' + ', '.join(mismatched)}")
    for p in policies:
        rows = [k for k in kinds if k["feature"] == p]
        print(f"ledger rows, {p}: " + ", ".join(f"{k['attempt_kind']} {k['n']} (${Decimal(k['cost']):.6f})"
                                                 for k in rows))

    if "full" in stats:
        s = stats["full"]
        print(f"\nTargets (full policy): at a sufficient tier >= {TARGET_SUFFICIENT:.0%}: {s['sufficient']:.1%} "
              f"({'met' if s['sufficient'] >= TARGET_SUFFICIENT else 'MISSED'}); cost <= label-perfect: "
              + (f"{s['cost'] / perfect:.3f}x ({'met' if s['cost'] <= perfect else 'MISSED'})" if perfect else "–"))
    for p in [p for p in ("router-only", "full") if p in policies]:
        print(f"\nPer task kind, {p}:")
        print("| kind | label tier | requests | at sufficient tier | served tier 1/2/3 | escalated | cache hits | "
              "cost / request |")
        print("|---|---:|---:|---:|---|---:|---:|---:|")
        for kind, k in sorted(by_kind(tasks, all_results[p]).items(), key=lambda kv: (kv[1]["tier"], kv[0])):
            print(f"| {kind} | {k['tier']} | {k['n']} | {k['sufficient'] / k['n']:.0%} | "
                  f"{k['served'][1]}/{k['served'][2]}/{k['served'][3]} | {k['escalated']} | {k['hits']} | "
                  f"${k['cost'] / k['n']:.7f} |")


if __name__ == "__main__":
    main()
