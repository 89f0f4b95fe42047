"""Shared fixtures: a live gateway over real HTTP, tenants, the catalog, and ClickHouse.

Tests use real PostgreSQL and Redis (from `make test`'s environment) and a
real embedded ClickHouse (chDB) in a fresh temporary folder per session.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveGateway:
    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def live_gateway(django_db_setup, django_db_blocker):
    """Tollgate's real ASGI app on uvicorn, in a thread of this process (so it shares chDB)."""
    import uvicorn

    from tollgate.asgi import application

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="live-gateway", daemon=True)
    with django_db_blocker.unblock():
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("live gateway did not start")
            time.sleep(0.02)
        yield LiveGateway(port)
        server.should_exit = True
        thread.join(10)
        _close_other_connections()


def _close_other_connections():
    # Server threads may still hold connections to the test database; drop them
    # so the test runner can drop the database afterwards.
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(autouse=True)
def forget_memoized_configuration():
    """Each test starts with empty per-process memos (core/memo.py): the database is emptied between
    tests without sending the signals that would otherwise drop them."""
    from core.memo import clear_all_memos

    clear_all_memos()
    yield
    clear_all_memos()


@pytest.fixture(autouse=True)
def no_response_caching(settings):
    """Tests send the same deterministic request again and again (to exhaust a budget, to warm a prefix
    cache) and mean the engine to answer each; the response caches are off for them. tests/caching turns
    them back on."""
    settings.TOLLGATE_CACHE = False


@pytest.fixture
def catalog(db):
    """The three CPU-engine models and the embedding model, with prices effective since last year."""
    from metering.models import CatalogModel, Price

    since = __import__("django.utils.timezone", fromlist=["now"]).now() - timedelta(days=365)
    prices = {
        "tollgate-mini": ("0.10", "0.01", "0.40"),
        "tollgate-small": ("0.50", "0.05", "1.50"),
        "tollgate-large": ("3.00", "0.30", "15.00"),
    }
    models = {}
    for tier, (name, (p_in, p_cached, p_out)) in enumerate(prices.items(), start=1):
        model = CatalogModel.objects.create(name=name, tier=tier, context_window=2048)
        Price.objects.create(model=model, effective_from=since, input_per_mtok=Decimal(p_in),
                             cached_input_per_mtok=Decimal(p_cached), output_per_mtok=Decimal(p_out))
        models[name] = model
    # The embedding model, billed per input token (no output tokens).
    model = CatalogModel.objects.create(name="all-minilm-l6-v2", tier=1, context_window=256)
    Price.objects.create(model=model, effective_from=since, input_per_mtok=Decimal("0.02"),
                         cached_input_per_mtok=Decimal("0.02"), output_per_mtok=Decimal("0"))
    models[model.name] = model
    return models


class Tenant:
    def __init__(self, org, features, key, plaintext, manager):
        self.org = org
        self.features = features
        self.key = key
        self.plaintext = plaintext
        self.manager = manager


@pytest.fixture
def make_tenant(db, django_user_model):
    from tenants.models import Feature, Membership, Organization
    from tenants.services import issue_api_key

    def make(slug: str, features=("chat", "search"), tz: str = "UTC") -> Tenant:
        org = Organization.objects.create(slug=slug, name=slug.title(), timezone=tz)
        created = {f: Feature.objects.create(organization=org, slug=f) for f in features}
        issued = issue_api_key(org, f"{slug} key", default_feature=created[features[0]])
        manager = django_user_model.objects.create_user(f"{slug}-manager", password="pw-for-tests")
        Membership.objects.create(user=manager, organization=org, role=Membership.Role.MANAGER)
        return Tenant(org, created, issued.api_key, issued.plaintext, manager)

    return make


@pytest.fixture
def tenant(make_tenant, catalog):
    return make_tenant("acme")


@pytest.fixture
def openai_client(live_gateway, tenant):
    import openai

    return openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0, timeout=60)


@pytest.fixture
def clickhouse():
    """The session's chDB, emptied for this test."""
    from metering import clickhouse as ch

    ch.truncate_all()
    return ch.get_client()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    """Let background alert deliveries (a thread per alert without a broker) finish before the test's
    database is flushed: a delivery still reading while the flush truncates its tables deadlocks it."""
    for thread in threading.enumerate():
        if thread.name == "budget-alert-delivery":
            thread.join(30)
    yield


@pytest.fixture
def second_gateway(live_gateway, transactional_db, tmp_path):
    """Another web process (`manage.py serve`) on the same PostgreSQL and Redis as the tests, with its own
    chDB folder, and memos that live 10 minutes: whatever it learns of a change within a test, it learns from
    the other processes, not from its memo expiring."""
    with gateway_process(tmp_path, TOLLGATE_CONFIG_CACHE_TTL_S="600") as gateway:
        yield gateway


@contextlib.contextmanager
def gateway_process(tmp_path, **settings: str):
    """A `manage.py serve` process on the tests' PostgreSQL and Redis, its own chDB folder, no shipper and
    no span export, and ``settings`` (environment variables) on top."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from django.db import connection

    from tests.servers import wait_until_serving

    db = connection.settings_dict
    env = {**os.environ,
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}", "TOLLGATE_INPROCESS_SHIPPER": "false",
           "TOLLGATE_SPANS_TO_CLICKHOUSE": "false", "UVICORN_LOG_LEVEL": "warning", **settings}
    port = free_port()
    server = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)],
                              cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        yield LiveGateway(port)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
