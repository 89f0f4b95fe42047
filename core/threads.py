"""Blocking work (the ORM, Redis) from async code, off the event loop."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import connection


def on_thread_pool(fn):
    """``fn`` as a coroutine run on the thread pool, with its database connection handed back afterwards.

    Django's default (thread-sensitive) ``sync_to_async`` runs every request's database work on one shared
    thread, so concurrent requests queue behind each other's queries and commits. The callers keep no
    thread-local state between calls, so their calls may run on any pool thread at once.
    """
    def run_and_release(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            if connection.errors_occurred:
                # Closed after any database error: SQLite's connections always say they are usable.
                connection.close()
            else:
                # Back to the connection pool on PostgreSQL (CONN_MAX_AGE 0: obsolete at once); on SQLite
                # the thread keeps it for its next call (CONN_MAX_AGE None: tollgate/settings.py).
                connection.close_if_unusable_or_obsolete()

    return sync_to_async(run_and_release, thread_sensitive=False)
