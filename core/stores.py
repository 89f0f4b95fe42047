"""The exceptions that mean a store (PostgreSQL, Redis) is unreachable, not that a request was wrong.

The /v1 edge answers them with HTTP 503 ``store_unavailable`` and Retry-After
(docs/operations.md, "When a store is down"), never a 500: the caller may
retry, and nothing was billed for a request whose usage could not be written.
"""

from __future__ import annotations

from django.db import DatabaseError, InterfaceError

try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # the embedded default needs no Redis client
    STORE_ERRORS: tuple[type[BaseException], ...] = (DatabaseError, InterfaceError)
else:
    STORE_ERRORS = (DatabaseError, InterfaceError, RedisConnectionError, RedisTimeoutError)
