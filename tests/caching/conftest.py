"""The exact and embedding caches run on Django's cache framework: the tests run on both of its backends
that Tollgate uses, the embedded default's local memory and production's Redis."""

import os

import pytest
from django.core.cache import cache
from django.test import override_settings

BACKENDS = {
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tollgate-cache-tests"},
    "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
              "LOCATION": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")},
}


@pytest.fixture(scope="session", autouse=True)
def embedder_loaded():
    """Load all-MiniLM-L6-v2 once before the first request: its first load (torch and the
    weights) can take longer than a test client's timeout on a busy machine."""
    import asyncio

    from serving.engines.embeddings import get_embedder

    asyncio.run(get_embedder().embed(["warm up"]))


@pytest.fixture(params=sorted(BACKENDS))
def cache_backend(request):
    """Each test once per backend (the gateway's thread sees the same override: caches are reset for all)."""
    with override_settings(CACHES={"default": BACKENDS[request.param]}):
        cache.clear()
        yield request.param
        cache.clear()


@pytest.fixture(autouse=True)
def response_caching_on(no_response_caching, settings):
    settings.TOLLGATE_CACHE = True  # the default outside tests (tests/conftest.py turns it off elsewhere)


@pytest.fixture(autouse=True)
def no_semantic_index_from_earlier_tests():
    from caching.semantic import forget_indexes

    forget_indexes()
    yield
    forget_indexes()
