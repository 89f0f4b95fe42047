import subprocess
import sys
from pathlib import Path

import pytest

from tenants.models import ApiKey
from tenants.services import AuthenticationFailed, authenticate_api_key, hash_secret, issue_api_key

pytestmark = pytest.mark.django_db


def test_only_a_hash_of_the_secret_is_stored(make_tenant):
    tenant = make_tenant("acme")
    stored = ApiKey.objects.get(pk=tenant.key.pk)
    assert tenant.plaintext not in (stored.prefix, stored.secret_hash)
    assert stored.secret_hash == hash_secret(tenant.plaintext)
    assert tenant.plaintext.startswith("tg-" + stored.prefix + "-")


def test_a_key_authenticates_to_its_org_and_default_feature(make_tenant):
    tenant = make_tenant("acme")
    ctx = authenticate_api_key(f"Bearer {tenant.plaintext}")
    assert (ctx.org_slug, ctx.feature_slug, ctx.api_key_id) == ("acme", "chat", tenant.key.pk)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer tg-short", "Bearer sk-abcdef"])
def test_malformed_authorization_headers_are_refused(header, make_tenant):
    make_tenant("acme")
    with pytest.raises(AuthenticationFailed):
        authenticate_api_key(header)


def test_same_prefix_wrong_secret_is_refused(make_tenant):
    tenant = make_tenant("acme")
    with pytest.raises(AuthenticationFailed):
        authenticate_api_key(f"Bearer {tenant.plaintext[:-1]}{'A' if tenant.plaintext[-1] != 'A' else 'B'}")


def test_last_used_is_recorded(make_tenant):
    tenant = make_tenant("acme")
    from django.core.cache import cache

    cache.delete(f"tenants:key-used:{tenant.key.pk}")
    authenticate_api_key(f"Bearer {tenant.plaintext}")
    assert ApiKey.objects.get(pk=tenant.key.pk).last_used_at is not None


@pytest.mark.django_db(transaction=True)
def test_create_api_key_command_prints_a_working_key_once(make_tenant):
    make_tenant("acme")
    root = Path(__file__).resolve().parents[2]
    from django.db import connection

    env = {**__import__("os").environ}
    # The child process must use this test database.
    db = connection.settings_dict
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}" if db["ENGINE"].endswith(
        "postgresql") else f"sqlite:///{db['NAME']}"
    out = subprocess.run([sys.executable, "manage.py", "create_api_key", "--org", "acme", "--feature", "search",
                          "--name", "ci"], cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    plaintext = out.strip()
    assert len(out.strip().splitlines()) == 1
    ctx = authenticate_api_key(f"Bearer {plaintext}")
    assert ctx.feature_slug == "search"
    assert ApiKey.objects.get(pk=ctx.api_key_id).name == "ci"

    failed = subprocess.run([sys.executable, "manage.py", "create_api_key", "--org", "nope"], cwd=root, env=env,
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "No organization" in failed.stderr
