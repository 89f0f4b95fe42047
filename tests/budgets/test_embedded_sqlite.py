"""The embedded default (SQLite, no Redis) enforces budgets under concurrency too.

Child processes with their own SQLite file, as `make run` does; nothing here touches PostgreSQL.
"""

import asyncio
import os
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import openai

from tests.conftest import free_port
from tests.servers import wait_until_serving

ROOT = Path(__file__).resolve().parents[2]

SETUP = """
import datetime
from decimal import Decimal
from django.utils import timezone
from budgets.models import Budget
from metering.models import CatalogModel, Price
from tenants.models import Organization
from tenants.services import issue_api_key
model = CatalogModel.objects.create(name="tollgate-mini", tier=1)
Price.objects.create(model=model, effective_from=timezone.now() - datetime.timedelta(days=1),
                     input_per_mtok=Decimal(100000), cached_input_per_mtok=Decimal(100000),
                     output_per_mtok=Decimal(100000))
org = Organization.objects.create(slug="acme", name="Acme")
Budget.objects.create(organization=org, amount=Decimal("15"))
print(issue_api_key(org, "key").plaintext)
"""

REPORT = """
from budgets.models import BudgetCounter
from metering.models import UsageRecord
counter = BudgetCounter.objects.get()
print(counter.spent, counter.reserved, sum(r.cost_total for r in UsageRecord.objects.all()))
"""


def manage(env, *args):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=True).stdout


def test_sqlite_keeps_concurrent_spend_inside_the_budget_and_counters_equal_the_ledger(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CLICKHOUSE_DSN",
                                                            "TOLLGATE_VAR_DIR", "DJANGO_SETTINGS_MODULE"}}
    env.update({"TOLLGATE_VAR_DIR": str(tmp_path / "var"), "TOLLGATE_SPANS_TO_CLICKHOUSE": "false"})
    manage(env, "migrate", "--noinput", "-v0")
    key = manage(env, "shell", "-c", SETUP).strip().splitlines()[-1]  # $0.10 a token: ~15 requests fit

    port = free_port()
    server = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)

        async def fire(n):
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0,
                                        timeout=120)

            async def one():
                try:
                    await client.chat.completions.create(model="tollgate-mini", max_tokens=2,
                                                         messages=[{"role": "user", "content": "hi"}])
                    return "served"
                except openai.APIStatusError as exc:
                    return exc.code

            try:
                return Counter(await asyncio.gather(*(one() for _ in range(n))))
            finally:
                await client.close()

        outcomes = asyncio.run(fire(60))
    finally:
        server.terminate()
        server.wait(15)
    assert set(outcomes) == {"served", "budget_exceeded"}, outcomes
    spent, reserved, ledger = (Decimal(s) for s in manage(env, "shell", "-c", REPORT).splitlines()[-1].split())
    assert outcomes["served"] >= 10
    assert spent <= 15 and reserved == 0
    assert spent == ledger
