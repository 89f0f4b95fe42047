"""Model catalog, price book and the durable usage ledger."""

from __future__ import annotations

import uuid6
from django.conf import settings
from django.db import models
from django.utils import timezone

MONEY = {"max_digits": 20, "decimal_places": 9}


class CatalogModel(models.Model):
    """A model tenants can ask for by name. Tier orders models from cheapest to strongest."""

    name = models.CharField(max_length=100, unique=True, help_text="The `model` value clients send.")
    tier = models.PositiveSmallIntegerField(default=1, help_text="1 = smallest; routing and downgrade use it.")
    description = models.CharField(max_length=300, blank=True)
    context_window = models.PositiveIntegerField(default=2048)
    is_active = models.BooleanField(default=True, help_text="Inactive models are hidden and refused.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["tier", "name"]
        verbose_name = "catalog model"

    def __str__(self) -> str:
        return self.name


class Price(models.Model):
    """Prices per 1M tokens, effective from a moment on. New prices never rewrite history."""

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="prices")
    effective_from = models.DateTimeField(default=timezone.now)
    input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD per 1M input tokens")
    cached_input_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, help_text="USD per 1M input tokens served from the prefix cache"
    )
    output_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, help_text="USD per 1M output tokens")

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["model", "effective_from"], name="one_price_per_instant")]
        indexes = [models.Index(fields=["model", "-effective_from"])]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"


class UsageRecord(models.Model):
    """One billable attempt (or a recorded refusal). The source of truth for money.

    Rows are written once and never updated except for `shipped_at`, which
    marks them as copied to ClickHouse (the outbox).
    """

    class Status(models.TextChoices):
        OK = "ok"
        CANCELLED = "cancelled", "cancelled by client"
        ERROR = "error"
        REFUSED = "refused", "refused (budget)"

    class AttemptKind(models.TextChoices):
        PRIMARY = "primary"
        RETRY = "retry"
        ESCALATION = "escalation"
        CACHE_HIT = "cache_hit", "cache hit"

    # Time-ordered UUIDv7: rows sort by time and the id doubles as the dedup key downstream.
    event_id = models.UUIDField(primary_key=True, default=uuid6.uuid7, editable=False)
    request_id = models.CharField(max_length=64, db_index=True)
    trace_id = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    organization = models.ForeignKey("tenants.Organization", on_delete=models.PROTECT, related_name="+")
    feature = models.CharField(max_length=50, blank=True)
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    endpoint = models.CharField(max_length=40, default="chat.completions")
    model_requested = models.CharField(max_length=100)
    model_served = models.CharField(max_length=100, blank=True)
    pool = models.CharField(max_length=40, blank=True)
    replica = models.CharField(max_length=200, blank=True)
    attempt_kind = models.CharField(max_length=16, choices=AttemptKind.choices, default=AttemptKind.PRIMARY)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    error_code = models.CharField(max_length=64, blank=True)
    streamed = models.BooleanField(default=False)

    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    tokens_saved = models.PositiveIntegerField(default=0)

    queue_wait_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(default=0)
    engine_seconds = models.FloatField(default=0)

    cost_input = models.DecimalField(**MONEY, default=0)
    cost_output = models.DecimalField(**MONEY, default=0)
    cost_gpu = models.DecimalField(**MONEY, default=0)
    cost_total = models.DecimalField(**MONEY, default=0)
    price = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    cache_hit = models.BooleanField(default=False)
    downgraded = models.BooleanField(default=False)

    shipped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "created_at"]),
            models.Index(fields=["created_at"], condition=models.Q(shipped_at__isnull=True), name="usage_unshipped"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_served or self.model_requested} {self.cost_total}"
