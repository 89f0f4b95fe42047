"""API keys: stored as an HMAC keyed with a server-side secret, compared in constant time, never logged;
rotation gives a new key while the old one works for an overlap; old plain hashes are upgraded on use."""

import hashlib
import logging
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from tenants.models import ApiKey
from tenants.services import (
    AuthenticationFailed,
    authenticate_api_key,
    forget_cached_keys,
    hash_secret,
    rotate_api_key,
)

pytestmark = pytest.mark.django_db


def test_keys_are_stored_as_an_hmac_keyed_with_the_server_secret(make_tenant, settings):
    tenant = make_tenant("acme")
    stored = ApiKey.objects.get(pk=tenant.key.pk).secret_hash
    assert stored.startswith("hmac-sha256:")
    assert hashlib.sha256(tenant.plaintext.encode()).hexdigest() not in stored  # not a plain hash
    settings.TOLLGATE_API_KEY_HASH_SECRET = "another-server-secret"
    forget_cached_keys()
    assert hash_secret(tenant.plaintext) != stored
    with pytest.raises(AuthenticationFailed):  # the database alone does not check a key
        authenticate_api_key(f"Bearer {tenant.plaintext}")


def test_a_key_stored_as_a_plain_hash_still_works_and_is_rehashed(make_tenant):
    tenant = make_tenant("acme")
    ApiKey.objects.filter(pk=tenant.key.pk).update(secret_hash=hashlib.sha256(tenant.plaintext.encode()).hexdigest())
    forget_cached_keys()
    assert authenticate_api_key(f"Bearer {tenant.plaintext}").api_key_id == tenant.key.pk
    assert ApiKey.objects.get(pk=tenant.key.pk).secret_hash == hash_secret(tenant.plaintext)


def test_a_plain_hash_of_a_wrong_key_is_refused(make_tenant):
    tenant = make_tenant("acme")
    ApiKey.objects.filter(pk=tenant.key.pk).update(secret_hash=hashlib.sha256(b"something else").hexdigest())
    forget_cached_keys()
    with pytest.raises(AuthenticationFailed):
        authenticate_api_key(f"Bearer {tenant.plaintext}")


def test_rotation_gives_a_new_key_and_the_old_one_works_for_the_overlap(make_tenant):
    tenant = make_tenant("acme")
    ApiKey.objects.filter(pk=tenant.key.pk).update(requests_per_minute=7)
    issued = rotate_api_key(tenant.key, overlap=timedelta(hours=1))
    assert issued.plaintext != tenant.plaintext
    new = authenticate_api_key(f"Bearer {issued.plaintext}")
    assert (new.org_id, new.feature_slug, new.key_requests_per_minute) == (tenant.org.pk, "chat", 7)
    assert authenticate_api_key(f"Bearer {tenant.plaintext}").api_key_id == tenant.key.pk  # still works
    old = ApiKey.objects.get(pk=tenant.key.pk)
    assert timezone.now() + timedelta(minutes=59) < old.expires_at <= timezone.now() + timedelta(hours=1)
    assert ApiKey.objects.get(pk=new.api_key_id).replaces_id == tenant.key.pk


def test_a_rotated_key_stops_working_when_the_overlap_ends(make_tenant):
    tenant = make_tenant("acme")
    issued = rotate_api_key(tenant.key, overlap=timedelta(0))
    with pytest.raises(AuthenticationFailed, match="expired"):
        authenticate_api_key(f"Bearer {tenant.plaintext}")
    authenticate_api_key(f"Bearer {issued.plaintext}")


def test_the_admin_rotate_action_shows_the_new_key_once_and_sets_the_overlap(make_tenant, admin_client):
    tenant = make_tenant("acme")
    page = admin_client.post("/admin/tenants/apikey/", {"action": "rotate_selected",
                                                        "_selected_action": [tenant.key.pk]}, follow=True)
    assert page.status_code == 200
    new = ApiKey.objects.get(replaces=tenant.key)
    assert f"tg-{new.prefix}-" in page.content.decode()
    assert ApiKey.objects.get(pk=tenant.key.pk).expires_at is not None


def test_a_revoked_or_rotated_key_cannot_be_rotated(make_tenant):
    tenant = make_tenant("acme")
    ApiKey.objects.filter(pk=tenant.key.pk).update(revoked_at=timezone.now())
    with pytest.raises(ValueError):
        rotate_api_key(tenant.key)


@pytest.mark.django_db(transaction=True)
def test_keys_are_never_logged(live_gateway, tenant, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = tenant.plaintext[:-6] + "zzzzzz"
    client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0)
    client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    refused = httpx.post(f"{live_gateway.v1}/chat/completions", headers={"Authorization": f"Bearer {wrong}"},
                         json={"model": "tollgate-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 401
    assert wrong not in refused.text  # the answer shows a redacted key, as OpenAI's does
    secret_part = tenant.plaintext.rsplit("-", 1)[1]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert secret_part not in logged and wrong.rsplit("-", 1)[1] not in logged
