"""The exact response cache and the embedding cache (Django's cache framework), policies and purging.

Isolation comes first. Every entry is keyed by the tenant's permission scope
(``CacheScope``: org, feature, the key's user), so two orgs, or two keys of
one org with different scopes, can never meet on one entry. Every entry
remembers the API key whose request produced it, and is served only while
that key is active: a revoked key's entries are served to no one.

Purging a feature's or an org's cache does not scan Redis: each entry's key
holds the org's and the feature's purge generation, and a purge moves the
generation on, so every older entry becomes unreachable at once, in every
process, and expires on its own TTL. (Semantic entries are rows, deleted.)
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from core.memo import Memo
from tenants.models import ApiKey
from tenants.services import TenantContext

from .models import CachePolicy, SemanticEntry

EXACT, SEMANTIC, EMBEDDING = "exact", "semantic", "embedding"
HIT, MISS, BYPASS = "hit", "miss", "bypass"
HEADER = "X-Tollgate-Cache"
SIMILARITY_HEADER = "X-Tollgate-Cache-Similarity"
LAYER_HEADER = "X-Tollgate-Cache-Layer"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ----------------------------------------------------------------- who may share an entry


@dataclass(frozen=True)
class CacheScope:
    """The permission scope an entry belongs to: only requests with the same scope may read it.

    Keys carry no scopes of their own yet; what a key may see is its org, the
    feature it bills (its default or ``X-Feature``) and the person it belongs
    to, so those three make the scope. ``api_key_id`` is the writer, not part
    of the scope: two keys of one person and feature share answers.
    """

    org_id: int
    feature: str
    user_id: int | None
    api_key_id: int

    @classmethod
    def of(cls, tenant: TenantContext) -> "CacheScope":
        return cls(tenant.org_id, tenant.feature_slug, tenant.user_id, tenant.api_key_id)

    @property
    def label(self) -> str:
        return f"{self.org_id}\n{self.feature}\n{self.user_id or ''}"


def key_is_active(api_key_id: int) -> bool:
    """Whether the key that wrote an entry may still have it served (read from the database, every hit:
    a revocation in any process takes effect on the next lookup)."""
    now = timezone.now()
    return ApiKey.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now),
                                 pk=api_key_id, revoked_at__isnull=True).exists()


# ----------------------------------------------------------------- the caller's wishes and the policy


@dataclass(frozen=True)
class CacheDirectives:
    """The caller's ``Cache-Control`` request header, as far as the cache understands it.

    ``no-store``: the answer is not kept (and no entry is read either, so the
    request leaves no trace and depends on none); ``no-cache`` (or
    ``max-age=0``): no entry is served, the fresh answer may be kept;
    ``max-age=N``: only an entry at most N seconds old is served.
    """

    no_store: bool = False
    no_cache: bool = False
    max_age_s: int | None = None

    @property
    def may_read(self) -> bool:
        return not (self.no_store or self.no_cache or self.max_age_s == 0)

    @property
    def may_write(self) -> bool:
        return not self.no_store


_MAX_AGE = re.compile(r"^max-age\s*=\s*\"?(\d+)\"?$")


class BadCacheControl(ValueError):
    pass


def parse_cache_control(header: str | None) -> CacheDirectives:
    """Parse the directives; an unknown one is ignored as HTTP says (RFC 9111 5.2), a malformed max-age
    raises ``BadCacheControl`` rather than being read as "any age"."""
    if not header:
        return CacheDirectives()
    no_store = no_cache = False
    max_age = None
    for part in header.split(","):
        directive = part.strip().lower()
        if directive == "no-store":
            no_store = True
        elif directive == "no-cache":
            no_cache = True
        elif directive.startswith("max-age"):
            match = _MAX_AGE.match(directive)
            if match is None:
                raise BadCacheControl(f"Cache-Control max-age must be a number of seconds; got {part.strip()!r}.")
            max_age = int(match.group(1))
    return CacheDirectives(no_store=no_store, no_cache=no_cache, max_age_s=max_age)


@dataclass(frozen=True)
class Policy:
    exact: bool
    semantic: bool
    embeddings: bool
    ttl_s: int
    hit_price: Decimal


_policies: Memo[Policy] = Memo("cache policies")


def policy_for(org_id: int, feature: str) -> Policy:
    """The feature's policy, else the org's, else the defaults (memoized per process like other config)."""
    return _policies.get((org_id, feature), lambda: _load_policy(org_id, feature))


def memoized_policy(org_id: int, feature: str) -> Policy | None:
    """The policy when this process has it memoized (no database: safe on the event loop), else None."""
    return _policies.peek((org_id, feature))


def _load_policy(org_id: int, feature: str) -> Policy:
    if not settings.TOLLGATE_CACHE:
        return Policy(exact=False, semantic=False, embeddings=False, ttl_s=0, hit_price=Decimal(0))
    rows = {row.feature: row for row in CachePolicy.objects.filter(organization_id=org_id, feature__in=[feature, ""])}
    row = rows.get(feature) or rows.get("")
    default_ttl = settings.TOLLGATE_CACHE_TTL_S
    if row is None:
        return Policy(exact=True, semantic=settings.TOLLGATE_SEMANTIC_CACHE, embeddings=True, ttl_s=default_ttl,
                      hit_price=Decimal(0))
    return Policy(exact=row.exact_enabled, semantic=row.semantic_enabled and settings.TOLLGATE_SEMANTIC_CACHE,
                  embeddings=row.embeddings_enabled, ttl_s=row.ttl_s if row.ttl_s is not None else default_ttl,
                  hit_price=row.hit_price)


def forget_policies() -> None:
    _policies.invalidate()


# ----------------------------------------------------------------- purge generations


def _generation_key(org_id: int, feature: str | None) -> str:
    return f"tollgate:cache:gen:{org_id}" + ("" if feature is None else f":{digest(feature)[:16]}")


def _generations(scope: CacheScope) -> str:
    keys = [_generation_key(scope.org_id, None), _generation_key(scope.org_id, scope.feature)]
    found = cache.get_many(keys)
    return f"{found.get(keys[0], 0)}.{found.get(keys[1], 0)}"


def _bump(key: str) -> None:
    cache.add(key, 0, timeout=None)  # generations never expire: entries older than them must stay unreachable
    try:
        cache.incr(key)
    except ValueError:  # evicted in between
        cache.set(key, 1, timeout=None)


@dataclass(frozen=True)
class Purged:
    semantic_entries: int


def purge(org_id: int, feature: str | None = None) -> Purged:
    """Make every cached answer and embedding of the org (or of one of its features) unreachable, now."""
    _bump(_generation_key(org_id, feature))
    entries = SemanticEntry.objects.filter(organization_id=org_id)
    if feature is not None:
        entries = entries.filter(feature=feature)
    deleted, _ = entries.delete()
    return Purged(semantic_entries=deleted)


# ----------------------------------------------------------------- exact answers


@dataclass(frozen=True)
class CachedAnswer:
    """A kept answer: the response body as first sent, and how it was found."""

    body: str
    layer: str
    stored_at: float  # epoch seconds
    similarity: float | None = None

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.stored_at)


def _fresh(stored_at: float, expires_at: float, directives: CacheDirectives) -> bool:
    now = time.time()
    if expires_at <= now:  # the backend's own expiry is a second coarse; this is the promise
        return False
    return directives.max_age_s is None or now - stored_at <= directives.max_age_s


def _exact_key(scope: CacheScope, model: str, fingerprint: str) -> str:
    hashed = digest("\n".join((scope.label, model, fingerprint)))
    return f"tollgate:cache:exact:{scope.org_id}:{_generations(scope)}:{hashed}"


def lookup_exact(scope: CacheScope, model: str, fingerprint: str, directives: CacheDirectives) -> CachedAnswer | None:
    kept = cache.get(_exact_key(scope, model, fingerprint))
    if kept is None or not _fresh(kept["stored_at"], kept["expires_at"], directives):
        return None
    if not key_is_active(kept["api_key_id"]):
        return None
    return CachedAnswer(body=kept["body"], layer=EXACT, stored_at=kept["stored_at"])


def store_exact(scope: CacheScope, model: str, fingerprint: str, body: str, ttl_s: int) -> None:
    if ttl_s <= 0:
        return
    now = time.time()
    cache.set(_exact_key(scope, model, fingerprint),
              {"body": body, "api_key_id": scope.api_key_id, "stored_at": now, "expires_at": now + ttl_s},
              timeout=ttl_s)


# ----------------------------------------------------------------- embeddings


def _embedding_key(scope: CacheScope, model: str, text: str) -> str:
    # Per org, not shared between orgs: a hit would tell one org that another embedded the same text.
    gen = _generations(scope)
    hashed = digest("\n".join((scope.label, model, text)))
    return f"tollgate:cache:emb:{scope.org_id}:{gen}:{hashed}"


def embedding_keys(scope: CacheScope, model: str, texts: list[str]) -> list[str]:
    return [_embedding_key(scope, model, text) for text in texts]


def lookup_embeddings(scope: CacheScope, model: str, texts: list[str],
                      directives: CacheDirectives) -> tuple[list[list[float]] | None, list[str]]:
    """Every text's cached vector (None unless all are kept, fresh, and written by active keys), and the
    cache keys, for storing the answer on a miss."""
    keys = embedding_keys(scope, model, texts)
    found = cache.get_many(keys)
    kept = [found.get(key) for key in keys]
    if any(k is None or not _fresh(k["stored_at"], k["expires_at"], directives) for k in kept):
        return None, keys
    if not all(key_is_active(writer) for writer in {k["api_key_id"] for k in kept}):
        return None, keys
    return [k["vector"] for k in kept], keys


def store_embeddings(scope: CacheScope, keys: list[str], vectors: list[list[float]], ttl_s: int) -> None:
    if ttl_s <= 0 or not keys:
        return
    now = time.time()
    cache.set_many({key: {"vector": vector, "api_key_id": scope.api_key_id, "stored_at": now,
                          "expires_at": now + ttl_s} for key, vector in zip(keys, vectors)}, timeout=ttl_s)
