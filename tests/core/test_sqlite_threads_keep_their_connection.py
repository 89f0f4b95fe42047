"""On the embedded default (SQLite), a thread-pool thread keeps its database connection between calls.

Opening a SQLite connection runs the WAL pragmas and registers Django's SQL functions (open and close took
1.2–1.6 ms), and every request hops to the thread pool several times (its hold, its settlement, its cache).
A connection that errored is still closed, so the next call opens a good one. Run in a child process, since
this test session's own database is PostgreSQL.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "tollgate.settings"
import django
django.setup()
from concurrent.futures import ThreadPoolExecutor
from django.db import connection
from core.threads import on_thread_pool

def which_connection():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return id(connection.connection)

def break_it():
    connection.connection.close()  # the file handle is gone under Django's feet
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return "errored"

async def main():
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))  # one thread: same one
    first = await on_thread_pool(which_connection)()
    second = await on_thread_pool(which_connection)()
    broke = await on_thread_pool(break_it)()
    after = await on_thread_pool(which_connection)()
    print(json.dumps({"vendor": connection.vendor, "reused": first == second, "broke": broke,
                      "reopened": after not in (first, second)}))

asyncio.run(main())
"""


def test_a_pool_thread_reuses_its_sqlite_connection_and_replaces_a_broken_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["TOLLGATE_VAR_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"vendor": "sqlite", "reused": True, "broke": "errored", "reopened": True}
