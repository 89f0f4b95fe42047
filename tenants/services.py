"""Key issuing and authentication. Plain functions; views and commands call these."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.memo import Memo, Throttle, invalidate_everywhere

from .models import ApiKey, Feature, Membership, Organization

KEY_PREFIX = "tg-"
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_LEN = 12
_SECRET_LEN = 40
# last_used_at is a hint for admins, not an audit log: write it at most this often per key.
LAST_USED_WRITE_INTERVAL_S = 60


class AuthenticationFailed(Exception):
    """The request carries no usable API key. `reason` is safe to show the caller."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class WouldBlock(Exception):
    """Authenticating without blocking was asked for, and this key needs the database or the cache."""


def _would_block():
    raise WouldBlock


class UnknownFeature(Exception):
    def __init__(self, slug: str):
        super().__init__(f"Unknown feature {slug!r} for this organization.")
        self.slug = slug


@dataclass(frozen=True)
class TenantContext:
    """Who a /v1 request is billed to. Plain data, so it can cross threads and apps."""

    org_id: int
    org_slug: str
    org_timezone: str
    api_key_id: int
    api_key_prefix: str
    user_id: int | None
    feature_id: int | None
    feature_slug: str
    # Rate limits (serving/ratelimits.py); None: unlimited.
    key_requests_per_minute: int | None = None
    key_tokens_per_minute: int | None = None
    org_requests_per_minute: int | None = None
    org_tokens_per_minute: int | None = None


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


HASH_SCHEME = "hmac-sha256:"


def hash_secret(plaintext_key: str) -> str:
    """The stored form of a key: HMAC-SHA256 keyed with a server-side secret (TOLLGATE_API_KEY_HASH_SECRET).

    Keys are 40 random base62 characters (~238 bits), so a fast hash is as strong as a slow one against
    guessing and keeps authentication off the CPU budget; the server-side secret means a copy of the
    database alone (a backup, a replica) is not enough to check a guessed or leaked key against it.
    """
    digest = hmac.new(settings.TOLLGATE_API_KEY_HASH_SECRET.encode(), plaintext_key.encode("utf-8", "surrogatepass"),
                      hashlib.sha256).hexdigest()
    return HASH_SCHEME + digest


def _legacy_hash(plaintext_key: str) -> str:
    # Keys issued before keyed hashes: a bare SHA-256, rehashed the first time the key authenticates.
    return hashlib.sha256(plaintext_key.encode("utf-8", "surrogatepass")).hexdigest()


def secret_matches(stored_hash: str, plaintext_key: str) -> bool:
    """Whether ``plaintext_key`` is the key stored as ``stored_hash``, compared in constant time."""
    expected = hash_secret(plaintext_key) if stored_hash.startswith(HASH_SCHEME) else _legacy_hash(plaintext_key)
    return hmac.compare_digest(stored_hash.encode(), expected.encode())


def generate_key_material() -> tuple[str, str]:
    """Return (prefix, plaintext key)."""
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(_PREFIX_LEN))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LEN))
    return prefix, f"{KEY_PREFIX}{prefix}-{secret}"


def issue_api_key(
    organization: Organization,
    name: str,
    *,
    default_feature: Feature | None = None,
    user=None,
    expires_at=None,
    plaintext: str | None = None,
) -> IssuedKey:
    """Create a key and return its plaintext once. `plaintext` is for fixed demo keys only."""
    if plaintext is None:
        prefix, plaintext = generate_key_material()
    else:
        prefix = parse_prefix(plaintext)
        if prefix is None:
            raise ValueError("plaintext key is not in Tollgate's key format")
    key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=prefix,
        secret_hash=hash_secret(plaintext),
        default_feature=default_feature,
        user=user,
        expires_at=expires_at,
    )
    return IssuedKey(api_key=key, plaintext=plaintext)


def parse_prefix(plaintext_key: str) -> str | None:
    if not plaintext_key.startswith(KEY_PREFIX):
        return None
    prefix, sep, secret = plaintext_key[len(KEY_PREFIX):].partition("-")
    if not sep or len(prefix) != _PREFIX_LEN or not secret:
        return None
    return prefix


def redact_key(plaintext_key: str) -> str:
    if len(plaintext_key) <= 10:
        return "****"
    return f"{plaintext_key[:7]}…{plaintext_key[-4:]}"


@dataclass(frozen=True)
class KeyRecord:
    """What authentication needs of one key row, as plain data (memoized per web process)."""

    key_id: int
    prefix: str
    secret_hash: str
    revoked_at: datetime | None
    expires_at: datetime | None
    user_id: int | None
    org_id: int
    org_slug: str
    org_timezone: str
    default_feature_id: int | None
    default_feature_slug: str
    key_requests_per_minute: int | None = None
    key_tokens_per_minute: int | None = None
    org_requests_per_minute: int | None = None
    org_tokens_per_minute: int | None = None


# Keys by prefix. A change (revocation, rotation, an admin edit) drops the entry here at once and, once
# committed, in every other web process through Redis (core/memo.py); without that channel within
# TOLLGATE_CONFIG_CACHE_TTL_S.
_keys: Memo[KeyRecord | None] = Memo("api keys", shared=True)
_features: Memo[int | None] = Memo("features", shared=True)
_last_used = Throttle()


def _load_key(prefix: str) -> KeyRecord | None:
    key = ApiKey.objects.select_related("organization", "default_feature").filter(prefix=prefix).first()
    if key is None:
        return None
    feature = key.default_feature
    return KeyRecord(
        key_id=key.pk, prefix=key.prefix, secret_hash=key.secret_hash, revoked_at=key.revoked_at,
        expires_at=key.expires_at, user_id=key.user_id, org_id=key.organization_id,
        org_slug=key.organization.slug, org_timezone=key.organization.timezone,
        default_feature_id=feature.pk if feature else None, default_feature_slug=feature.slug if feature else "",
        key_requests_per_minute=key.requests_per_minute, key_tokens_per_minute=key.tokens_per_minute,
        org_requests_per_minute=key.organization.requests_per_minute,
        org_tokens_per_minute=key.organization.tokens_per_minute,
    )


def _feature_id(org_id: int, slug: str, blocking: bool = True) -> int | None:
    return _features.get(
        (org_id, slug),
        (lambda: Feature.objects.filter(organization_id=org_id, slug=slug).values_list("pk", flat=True).first())
        if blocking else _would_block,
        store=lambda pk: pk is not None,
    )


def forget_cached_keys(prefix: str | None = None) -> None:
    """Drop memoized keys (one, or all) so the next request reads the database: here now, and in every web
    process once the change is committed."""
    _forget(prefix, everywhere=False)
    transaction.on_commit(lambda: _forget(prefix, everywhere=True))


def _forget(prefix: str | None, everywhere: bool) -> None:
    drop = invalidate_everywhere if everywhere else (lambda memo, *key: memo.invalidate(*key))
    if prefix is None:
        drop(_keys)
        drop(_features)
    else:
        drop(_keys, prefix)


def authenticate_api_key(authorization_header: str | None, feature_slug: str | None = None, *,
                         blocking: bool = True) -> TenantContext:
    """Resolve `Authorization: Bearer <key>` (and an optional X-Feature) to a tenant.

    Raises AuthenticationFailed or UnknownFeature. ``blocking=False`` answers
    from this process's memos alone and raises WouldBlock where it would need
    the database or the cache: the gateway's event loop tries that first and
    goes to a thread only then, since a hop to the thread pool costs more than
    the whole check when the key is memoized.
    """
    if not authorization_header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'."
        )
    scheme, _, plaintext = authorization_header.partition(" ")
    plaintext = plaintext.strip()
    if scheme.lower() != "bearer" or not plaintext:
        raise AuthenticationFailed("The Authorization header must be 'Bearer YOUR_KEY'.")
    prefix = parse_prefix(plaintext)
    key = None
    if prefix is not None:
        # Unknown prefixes are not memoized, so guessing keys cannot fill the memo.
        key = _keys.get(prefix, (lambda: _load_key(prefix)) if blocking else _would_block,
                        store=lambda record: record is not None)
    if key is None or not secret_matches(key.secret_hash, plaintext):
        raise AuthenticationFailed(f"Incorrect API key provided: {redact_key(plaintext)}.")
    if not key.secret_hash.startswith(HASH_SCHEME):
        if not blocking:
            raise WouldBlock
        _rehash(key, plaintext)
    now = timezone.now()
    if key.revoked_at is not None:
        raise AuthenticationFailed("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= now:
        raise AuthenticationFailed("This API key has expired.")

    feature_id, feature = key.default_feature_id, key.default_feature_slug
    if feature_slug and feature_slug != feature:
        feature_id, feature = _feature_id(key.org_id, feature_slug, blocking), feature_slug
        if feature_id is None:
            raise UnknownFeature(feature_slug)

    if blocking:
        _touch_last_used(key.key_id, now)
    elif _last_used.pending(key.key_id):
        raise WouldBlock
    return TenantContext(
        org_id=key.org_id,
        org_slug=key.org_slug,
        org_timezone=key.org_timezone,
        api_key_id=key.key_id,
        api_key_prefix=key.prefix,
        user_id=key.user_id,
        feature_id=feature_id,
        feature_slug=feature,
        key_requests_per_minute=key.key_requests_per_minute,
        key_tokens_per_minute=key.key_tokens_per_minute,
        org_requests_per_minute=key.org_requests_per_minute,
        org_tokens_per_minute=key.org_tokens_per_minute,
    )



def _touch_last_used(key_id: int, now) -> None:
    # The in-process throttle spares the Redis round trip on almost every request; cache.add is
    # atomic across processes with Redis, so there is still one write per key per interval overall.
    if not _last_used.due(key_id, LAST_USED_WRITE_INTERVAL_S):
        return
    if cache.add(f"tenants:key-used:{key_id}", 1, timeout=LAST_USED_WRITE_INTERVAL_S):
        ApiKey.objects.filter(pk=key_id).update(last_used_at=now)


def _rehash(key: KeyRecord, plaintext: str) -> None:
    ApiKey.objects.filter(pk=key.key_id, secret_hash=key.secret_hash).update(secret_hash=hash_secret(plaintext))
    forget_cached_keys(key.prefix)


def revoke_api_key(key: ApiKey) -> None:
    """Refuse the key from now on, in every web process (once this commits)."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    forget_cached_keys(key.prefix)


def rotate_api_key(key: ApiKey, overlap: timedelta | None = None) -> IssuedKey:
    """A new key like ``key`` (org, name, feature, person, limits); ``key`` keeps working for ``overlap``
    (TOLLGATE_API_KEY_ROTATION_OVERLAP_S by default), so callers can switch without downtime, then expires."""
    if overlap is None:
        overlap = timedelta(seconds=settings.TOLLGATE_API_KEY_ROTATION_OVERLAP_S)
    with transaction.atomic():
        old = ApiKey.objects.select_for_update().get(pk=key.pk)
        if not old.is_active:
            raise ValueError("Only an active key can be rotated; issue a new key instead.")
        issued = issue_api_key(old.organization, old.name, default_feature=old.default_feature, user=old.user,
                               expires_at=old.expires_at)
        issued.api_key.requests_per_minute = old.requests_per_minute
        issued.api_key.tokens_per_minute = old.tokens_per_minute
        issued.api_key.replaces = old
        issued.api_key.save(update_fields=["requests_per_minute", "tokens_per_minute", "replaces"])
        ends = timezone.now() + overlap
        if old.expires_at is None or old.expires_at > ends:
            ApiKey.objects.filter(pk=old.pk).update(expires_at=ends)
        forget_cached_keys(old.prefix)
    return issued


def organizations_managed_by(user) -> "list[Organization]":
    """Orgs whose dashboards `user` may see: staff see all, managers their own."""
    if not user.is_authenticated:
        return []
    if user.is_staff:
        return list(Organization.objects.all())
    return list(
        Organization.objects.filter(
            Q(memberships__user=user) & Q(memberships__role=Membership.Role.MANAGER)
        ).distinct()
    )


def can_view_organization(user, organization: Organization) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    return Membership.objects.filter(
        user=user, organization=organization, role=Membership.Role.MANAGER
    ).exists()
