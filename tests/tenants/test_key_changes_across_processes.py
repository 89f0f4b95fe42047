"""Revocation and rotation take effect at once in every web process: another gateway process, whose memos
would otherwise keep a key for ten minutes, refuses a revoked key within moments."""

import time
from datetime import timedelta

import openai
import pytest

from core.memo import subscribed
from tenants.services import revoke_api_key, rotate_api_key

pytestmark = pytest.mark.django_db(transaction=True)


def models_answer(gateway, plaintext) -> bool:
    try:
        openai.OpenAI(base_url=gateway.v1, api_key=plaintext, max_retries=0, timeout=10).models.list()
        return True
    except openai.AuthenticationError:
        return False


def memoized_there(gateway, plaintext) -> None:
    """Have ``gateway`` hold the key in its memo: the first request starts its listener, which drops every
    shared memo once subscribed (in the background); the request after that memoizes the key for good."""
    assert models_answer(gateway, plaintext)
    time.sleep(0.5)
    assert models_answer(gateway, plaintext)


def eventually_refused(gateway, plaintext, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not models_answer(gateway, plaintext):
            return True
        time.sleep(0.05)
    return False


def test_a_revoked_key_is_refused_at_once_by_another_web_process(second_gateway, tenant):
    memoized_there(second_gateway, tenant.plaintext)
    revoke_api_key(tenant.key)
    assert eventually_refused(second_gateway, tenant.plaintext)


def test_a_rotated_key_works_beside_the_new_one_then_expires_everywhere(second_gateway, tenant):
    memoized_there(second_gateway, tenant.plaintext)
    issued = rotate_api_key(tenant.key, overlap=timedelta(seconds=2))
    assert models_answer(second_gateway, issued.plaintext)
    assert models_answer(second_gateway, tenant.plaintext)  # the overlap
    time.sleep(2)
    assert eventually_refused(second_gateway, tenant.plaintext)
    assert models_answer(second_gateway, issued.plaintext)


def test_this_process_listens_for_changes_made_elsewhere(tenant, live_gateway):
    # The first shared-memo read starts the listener; it drops every shared memo on subscribing.
    models_answer(live_gateway, tenant.plaintext)
    assert subscribed.wait(5)
