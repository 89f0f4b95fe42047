"""Login throttling for the sign-in forms (dashboards' /accounts/login/ and the admin's): after
``TOLLGATE_LOGIN_FAILURE_LIMIT`` failed attempts for one username from one address within
``TOLLGATE_LOGIN_FAILURE_WINDOW_S``, that username is locked out from that address for
``TOLLGATE_LOGIN_LOCKOUT_S``: every sign-in POST for it gets a 429 that says so and when to retry,
even with the right password. A successful sign-in clears the count.

Per username and address, not per username alone, so nobody can lock a person out from elsewhere;
per address alone would lock out everyone behind one proxy. The counts live in Django's cache
(Redis in production), so every web process shares them.

Why not django-axes: it wants its own backend first in AUTHENTICATION_BACKENDS (which then refuses
every ``authenticate()`` without a request: the test client's ``login`` and our commands), a
middleware, database tables and a lockout template; the policy above is a cache counter and two
signal receivers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import redis

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpResponse
from django.urls import reverse
from django.utils.html import format_html

LOGIN_URL_NAMES = ("login", "admin:login")
logger = logging.getLogger(__name__)


def _address(request) -> str:
    # REMOTE_ADDR: behind a proxy it is the proxy's, and the limit is then per username (docs/operations.md).
    return request.META.get("REMOTE_ADDR", "")


def _keys(username: str, address: str) -> tuple[str, str]:
    digest = hashlib.sha256(f"{username.strip().lower()}\n{address}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"tollgate:login-failures:{digest}", f"tollgate:login-locked:{digest}"


def locked_for_s(username: str, address: str) -> int:
    """Seconds left of this username's lockout from this address; 0 when it may try (also when the cache is
    down: sign-in then works unthrottled, as the log says, rather than not at all)."""
    try:
        until = cache.get(_keys(username, address)[1])
    except redis.RedisError as exc:
        logger.warning("sign-in throttling off (fail open): the cache is unreachable: %s", exc)
        return 0
    return max(0, math.ceil(until - time.time())) if until else 0


def record_failure(username: str, address: str) -> None:
    try:
        _record_failure(username, address)
    except redis.RedisError as exc:
        logger.warning("sign-in failure not counted (fail open): the cache is unreachable: %s", exc)


def _record_failure(username: str, address: str) -> None:
    failures, locked = _keys(username, address)
    cache.add(failures, 0, timeout=settings.TOLLGATE_LOGIN_FAILURE_WINDOW_S)
    try:
        count = cache.incr(failures)
    except ValueError:  # expired between add and incr
        cache.add(failures, 1, timeout=settings.TOLLGATE_LOGIN_FAILURE_WINDOW_S)
        count = 1
    if count >= settings.TOLLGATE_LOGIN_FAILURE_LIMIT:
        cache.set(locked, time.time() + settings.TOLLGATE_LOGIN_LOCKOUT_S, timeout=settings.TOLLGATE_LOGIN_LOCKOUT_S)
        cache.delete(failures)


@receiver(user_login_failed, dispatch_uid="tenants.login_failed")
def count_failed_login(sender, credentials, request=None, **kwargs):
    if request is not None:  # None: a call from code (tests, commands), not a sign-in form
        record_failure(str(credentials.get("username", "")), _address(request))


@receiver(user_logged_in, dispatch_uid="tenants.login_succeeded")
def clear_failed_logins(sender, request, user, **kwargs):
    if request is not None:
        try:
            cache.delete(_keys(user.get_username(), _address(request))[0])
        except redis.RedisError:
            pass  # the count expires by itself


class LoginThrottleMiddleware:
    """Answers a sign-in POST for a locked-out username (from this address) with 429, before the form runs."""

    def __init__(self, get_response):
        self.get_response = get_response
        self._paths: frozenset[str] | None = None

    def __call__(self, request):
        if request.method == "POST":
            if self._paths is None:
                self._paths = frozenset(reverse(name) for name in LOGIN_URL_NAMES)
            if request.path in self._paths:
                seconds = locked_for_s(request.POST.get("username", ""), _address(request))
                if seconds:
                    return _locked_out(seconds)
        return self.get_response(request)


def _locked_out(seconds: int) -> HttpResponse:
    minutes = math.ceil(seconds / 60)
    body = format_html(
        "<!doctype html><title>Too many sign-in attempts</title><h1>Too many sign-in attempts</h1>"
        "<p>This account is locked for sign-in from your address after {} failed attempts. "
        "Try again in {} minute{}, or ask an administrator to reset your password.</p>",
        settings.TOLLGATE_LOGIN_FAILURE_LIMIT, minutes, "" if minutes == 1 else "s")
    return HttpResponse(body, status=429, headers={"Retry-After": str(seconds)})
