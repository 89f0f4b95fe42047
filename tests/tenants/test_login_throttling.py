"""Sign-in throttling: after TOLLGATE_LOGIN_FAILURE_LIMIT failures for one username from one address, that
username is locked out from that address (429 saying so, even with the right password); others are not."""

import time

import pytest
from django.core.cache import cache
from django.test import Client

pytestmark = pytest.mark.django_db

PASSWORD = "right-password-123"


@pytest.fixture(autouse=True)
def no_counts_from_earlier_tests(settings):
    cache.clear()
    # A fast hasher: the default one takes a large share of a second per attempt, and these tests make dozens.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD, is_staff=True, is_superuser=True)


def sign_in(password, username="alice", address="10.0.0.1", url="/accounts/login/"):
    return Client(REMOTE_ADDR=address).post(url, {"username": username, "password": password})


def fail(times, **where):
    for _ in range(times):
        assert sign_in("wrong", **where).status_code == 200  # the form again, with its error


def test_five_failures_lock_the_username_from_that_address_even_with_the_right_password(alice):
    fail(5)
    locked = sign_in(PASSWORD)
    assert locked.status_code == 429
    assert "Too many sign-in attempts" in locked.content.decode()
    assert "Try again in 15 minutes" in locked.content.decode()
    assert 0 < int(locked["Retry-After"]) <= 900


def test_a_lockout_does_not_reach_other_addresses_or_usernames(alice, django_user_model):
    django_user_model.objects.create_user("bob", password=PASSWORD)
    fail(5)
    assert sign_in(PASSWORD, address="10.0.0.2").status_code == 302
    assert sign_in(PASSWORD, username="bob").status_code == 302


def test_fewer_failures_then_a_success_clear_the_count(alice):
    fail(4)
    assert sign_in(PASSWORD).status_code == 302
    fail(4)
    assert sign_in(PASSWORD).status_code == 302


def test_the_admin_sign_in_is_throttled_too(alice):
    fail(5, url="/admin/login/")
    assert sign_in(PASSWORD, url="/admin/login/").status_code == 429
    assert sign_in(PASSWORD).status_code == 429  # one count for both forms


def test_the_lockout_ends(alice, settings):
    settings.TOLLGATE_LOGIN_LOCKOUT_S = 1
    fail(5)
    assert sign_in(PASSWORD).status_code == 429
    time.sleep(1.1)
    assert sign_in(PASSWORD).status_code == 302


def test_usernames_are_counted_whatever_their_case(alice):
    fail(3)
    fail(2, username="ALICE")
    assert sign_in(PASSWORD).status_code == 429


def test_sign_in_still_works_when_the_cache_is_down(alice, settings):
    # Django rebuilds its cache handlers when CACHES changes (its setting_changed receiver).
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0"}}  # nothing listens there
    assert sign_in("wrong").status_code == 200
    assert sign_in(PASSWORD).status_code == 302
