"""The gateway checks a memoized key on its event loop: no query, no Redis, the same answer as the database
would give; anything that needs either is handed back (WouldBlock) to be done on a thread."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.memo import clear_all_memos
from tenants.services import AuthenticationFailed, WouldBlock, authenticate_api_key, revoke_api_key
from tests.invalidations import drain_invalidations

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def listening(tenant):
    """This process's memo invalidation listener subscribed, and every invalidation sent so far (the key's
    creation) handled: either arriving mid-test would drop the memoized key the test is about."""
    authenticate_api_key(f"Bearer {tenant.plaintext}")  # the first shared memo read starts the listener
    drain_invalidations()
    clear_all_memos()


def test_a_memoized_key_is_checked_without_touching_the_database(tenant):
    header = f"Bearer {tenant.plaintext}"
    with pytest.raises(WouldBlock):
        authenticate_api_key(header, blocking=False)  # not memoized yet
    blocking = authenticate_api_key(header)
    with CaptureQueriesContext(connection) as queries:
        fast = authenticate_api_key(header, blocking=False)
    assert fast == blocking
    assert len(queries) == 0


def test_a_wrong_secret_is_refused_without_blocking_too(tenant):
    authenticate_api_key(f"Bearer {tenant.plaintext}")
    with pytest.raises(AuthenticationFailed):
        authenticate_api_key(f"Bearer {tenant.plaintext[:-4]}XXXX", blocking=False)


def test_an_unmemoized_feature_is_handed_to_a_thread(tenant):
    header = f"Bearer {tenant.plaintext}"
    authenticate_api_key(header)
    with pytest.raises(WouldBlock):
        authenticate_api_key(header, "search", blocking=False)
    assert authenticate_api_key(header, "search").feature_slug == "search"
    assert authenticate_api_key(header, "search", blocking=False).feature_slug == "search"


def test_a_revoked_key_is_never_answered_from_the_memo(tenant):
    header = f"Bearer {tenant.plaintext}"
    authenticate_api_key(header)
    revoke_api_key(tenant.key)
    with pytest.raises(WouldBlock):
        authenticate_api_key(header, blocking=False)
    with pytest.raises(AuthenticationFailed):
        authenticate_api_key(header)
