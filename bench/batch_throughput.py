"""Benchmark: a batch's lines through the Batch API runner vs the same requests served one at a time.

Both paths serve N identical-shape chat requests on the in-process CPU engine through the request flow with
no HTTP (route, budget hold, generate, settle: one ledger row each). "One at a time" is a client calling
``serve_chat_blocking`` in a loop; "batch, c=K" is ``batches.services.run_batch`` on a batch of the same N
lines with ``TOLLGATE_BATCH_CONCURRENCY=K`` (it also writes each line's state, the counts and the output
file). The ratio is each row's requests/s over the one-at-a-time row's, in the same run.

    .venv/bin/python bench/batch_throughput.py --database-url postgres://postgres@127.0.0.1:5432/tg_bench \\
        --redis-url redis://127.0.0.1:6379/9 --lines 48

It creates (and migrates) the database if needed and empties the tables it uses.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--lines", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", default="1,4,8")
    args = parser.parse_args()

    os.environ.update(DATABASE_URL=args.database_url, TOLLGATE_VAR_DIR=tempfile.mkdtemp(prefix="tg-bench-"),
                      TOLLGATE_SPANS_TO_CLICKHOUSE="false", DJANGO_SETTINGS_MODULE="tollgate.settings")
    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    name = args.database_url.rsplit("/", 1)[1]
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], capture_output=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
    sys.path.insert(0, str(ROOT))

    import django

    django.setup()
    from datetime import timedelta
    from decimal import Decimal

    from django.conf import settings
    from django.utils import timezone

    from batches import services
    from batches.models import Batch, BatchFile
    from metering.models import CatalogModel, Price, UsageRecord
    from serving.flow.context import RequestContext
    from serving.flow.pipeline import serve_chat_blocking
    from serving.protocol import ChatCompletionRequest
    from tenants.models import Feature, Organization
    from tenants.services import authenticate_api_key, issue_api_key

    Batch.objects.all().delete()
    BatchFile.objects.all().delete()
    UsageRecord.objects.all().delete()
    model, _ = CatalogModel.objects.get_or_create(name="tollgate-mini", defaults={"tier": 1, "context_window": 2048})
    if not model.prices.exists():
        Price.objects.create(model=model, effective_from=timezone.now() - timedelta(days=1),
                             input_per_mtok=Decimal("0.10"), cached_input_per_mtok=Decimal("0.01"),
                             output_per_mtok=Decimal("0.40"))
    org, _ = Organization.objects.get_or_create(slug="bench-batch", defaults={"name": "Bench"})
    feature, _ = Feature.objects.get_or_create(organization=org, slug="bench")
    tenant = authenticate_api_key(f"Bearer {issue_api_key(org, 'bench', default_feature=feature).plaintext}")

    def body(i: int) -> dict:
        # Distinct prompts (no prefix-cache advantage for either path), temperature 0, a fixed output cap.
        return {"model": "tollgate-mini", "messages": [{"role": "user", "content": f"Request {i}: tell me a fact."}],
                "max_tokens": args.max_tokens, "temperature": 0}

    serve_chat_blocking(RequestContext(tenant=tenant, request=ChatCompletionRequest(**body(-1))))  # warm-up
    rows = []
    start = time.perf_counter()
    for i in range(args.lines):
        serve_chat_blocking(RequestContext(tenant=tenant, request=ChatCompletionRequest(**body(i))))
    baseline = args.lines / (time.perf_counter() - start)
    rows.append(("one at a time (serve_chat_blocking)", baseline))

    import json

    for level in [int(c) for c in args.concurrency.split(",")]:
        settings.TOLLGATE_BATCH_CONCURRENCY = level
        content = "\n".join(json.dumps({"custom_id": f"c{level}-{i}", "method": "POST",
                                        "url": "/v1/chat/completions", "body": body(i + 1000 * level)})
                            for i in range(args.lines)).encode()
        source = services.create_file(tenant.org_id, "bench.jsonl", content, "batch")
        services.start_batch = lambda batch_id: None  # run it here, timed
        batch = services.create_batch(tenant, input_file_id=source.pk, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata=None)
        start = time.perf_counter()
        done = services.run_batch(batch.pk)
        elapsed = time.perf_counter() - start
        assert done.request_completed == args.lines, (done.status, done.request_completed, done.request_failed)
        rows.append((f"batch, c={level}", args.lines / elapsed))

    print(f"\n{args.lines} chat requests, max_tokens={args.max_tokens}, tollgate-mini on the in-process CPU engine")
    print(f"{'path':<40} {'requests/s':>11} {'vs one at a time':>17}")
    for label, rate in rows:
        print(f"{label:<40} {rate:>11.2f} {rate / baseline:>16.2f}x")


if __name__ == "__main__":
    main()
