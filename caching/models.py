"""What the caches keep in the database: per-org (and per-feature) cache policy, and semantic entries.

Exact and embedding entries live in Django's cache framework (Redis in
production) and expire there; semantic entries are rows here, so they
survive a restart and every web process sees the same ones (each process
keeps an in-memory vector index of them, rebuilt from these rows).
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone

MONEY = {"max_digits": 20, "decimal_places": 9}


class CachePolicy(models.Model):
    """How one org (or one of its features) uses the caches. No row: everything on, with the default TTL.

    A feature's row wins over the org-wide row (``feature`` blank) for that feature's requests.
    """

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    feature = models.SlugField(blank=True, help_text="Blank: every feature of the org without a row of its own.")
    exact_enabled = models.BooleanField(default=True, help_text="Serve repeated identical requests from cache.")
    semantic_enabled = models.BooleanField(
        default=True, help_text="Serve paraphrases of a cached question (verified, see docs/architecture.md).")
    embeddings_enabled = models.BooleanField(default=True, help_text="Serve repeated /v1/embeddings texts.")
    ttl_s = models.PositiveIntegerField(
        null=True, blank=True, help_text="Max age of an entry in seconds; blank: TOLLGATE_CACHE_TTL_S.")
    hit_price = models.DecimalField(**MONEY, default=Decimal(0), help_text="USD billed per cache hit (0: free).")

    class Meta:
        verbose_name_plural = "cache policies"
        constraints = [models.UniqueConstraint(fields=["organization", "feature"], name="one_cache_policy_per_feature")]

    def __str__(self) -> str:
        return f"cache policy {self.organization_id}/{self.feature or '*'}"


class SemanticEntry(models.Model):
    """One cached answer, findable by the meaning of its question within one tenant partition.

    ``partition`` is the tenant's permission scope (org, feature, user), the
    served model and a hash of everything in the request but the last user
    message (system prompt, earlier turns, tools, format, sampling): only a
    request identical in all of that may reuse the answer.
    """

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    feature = models.CharField(max_length=50, blank=True)
    partition = models.CharField(max_length=64, db_index=True)
    model = models.CharField(max_length=100)
    # The key whose request produced the answer: once it is revoked or expired, nobody is served the entry.
    api_key = models.ForeignKey("tenants.ApiKey", on_delete=models.CASCADE, related_name="+")
    question = models.TextField(help_text="The normalized last user message.")
    # Empty (NULL) while the entry is its partition's only question: nothing can be compared with it until a
    # second question arrives there, which embeds it then (caching/semantic.py).
    vector = models.BinaryField(null=True, help_text="all-MiniLM-L6-v2 embedding of the question, float32, "
                                "L2-normalized; empty until a second question in its partition needs it.")
    body = models.TextField(help_text="The chat completion as first sent (JSON).")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name_plural = "semantic entries"
        indexes = [models.Index(fields=["partition", "id"]), models.Index(fields=["organization", "feature"])]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.feature}: {self.question[:60]}"
