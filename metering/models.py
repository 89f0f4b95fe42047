"""Model catalog, price book and the durable usage ledger."""

from __future__ import annotations

from decimal import Decimal

import uuid6
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from core.money import format_usd

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
    # Work sent through the Batch API can wait, so it is served when GPUs are idle, and priced lower.
    batch_discount_percent = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal(50),
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(100))],
        help_text="Discount on the token prices for requests sent as Batch API lines (0-100)")

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["model", "effective_from"], name="one_price_per_instant")]
        indexes = [models.Index(fields=["model", "-effective_from"])]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"


class ChargebackMode(models.TextChoices):
    TOKENS = "tokens", "token prices"
    GPU_OVERHEAD = "gpu_overhead", "GPU time; idle pool time is platform overhead"
    GPU_SHARED = "gpu_shared", "GPU time; idle pool time shared in proportion to use"


class PoolRate(models.Model):
    """What a GPU pool costs: $/GPU-hour × GPUs, effective from a moment on (history is kept)."""

    pool = models.CharField(max_length=40, help_text="Pool name as the router records it (e.g. interactive).")
    effective_from = models.DateTimeField(default=timezone.now)
    usd_per_gpu_hour = models.DecimalField(max_digits=12, decimal_places=6)
    gpus = models.PositiveIntegerField(help_text="GPUs the pool holds (paid for whether busy or idle).")
    gpus_per_replica = models.PositiveIntegerField(
        default=1, help_text="GPUs one replica spans; a request's engine-seconds occupy all of them."
    )

    class Meta:
        ordering = ["pool", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["pool", "effective_from"], name="one_pool_rate_per_instant")]

    def __str__(self) -> str:
        return f"{self.pool} {self.gpus}×{format_usd(self.usd_per_gpu_hour)}/h from {self.effective_from:%Y-%m-%d}"


class ChargebackPolicy(models.Model):
    """How one organization is charged back. Orgs without a row pay token prices."""

    organization = models.OneToOneField("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    mode = models.CharField(max_length=16, choices=ChargebackMode.choices, default=ChargebackMode.TOKENS)

    class Meta:
        verbose_name_plural = "chargeback policies"

    def __str__(self) -> str:
        return f"{self.organization}: {self.get_mode_display()}"


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
        SUMMARY = "summary", "history summary (token optimization)"

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
    tpot_ms = models.FloatField(null=True, blank=True, help_text="Time per output token after the first.")
    duration_ms = models.FloatField(default=0)
    engine_seconds = models.FloatField(default=0)

    # Resource cost of this attempt, always computed from what it consumed:
    # tokens at the price in force, and GPU time at its pool's rate.
    cost_input = models.DecimalField(**MONEY, default=0)
    cost_output = models.DecimalField(**MONEY, default=0)
    cost_gpu = models.DecimalField(**MONEY, default=0)
    # What the org is charged for this attempt, in its chargeback mode (see metering.costs).
    cost_total = models.DecimalField(**MONEY, default=0)
    chargeback_mode = models.CharField(max_length=16, default="tokens")
    # The same attempt's cost by role (exactly one is non-zero): base = the answer the caller got;
    # retry = a failed attempt (recorded, never billed); escalation = an answer thrown away for a
    # stronger model's (billed). cost_total == cost_base + cost_escalation.
    cost_base = models.DecimalField(**MONEY, default=0)
    cost_retry = models.DecimalField(**MONEY, default=0)
    cost_escalation = models.DecimalField(**MONEY, default=0)
    # Counterfactual amounts: what a cache hit or removed tokens would have cost. Never billed.
    savings_cache = models.DecimalField(**MONEY, default=0)
    savings_tokens = models.DecimalField(**MONEY, default=0)
    price = models.ForeignKey(Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    pool_rate = models.ForeignKey("PoolRate", null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    cache_hit = models.BooleanField(default=False)
    # Which cache answered a cache hit: exact, semantic or embedding (blank for generated answers).
    cache_layer = models.CharField(max_length=16, blank=True)
    downgraded = models.BooleanField(default=False)
    discarded = models.BooleanField(default=False, help_text="The answer was thrown away (escalated).")
    retry_attempt = models.PositiveSmallIntegerField(default=0, help_text="0 for the first try, 1.. for retries.")
    batch_id = models.CharField(max_length=64, blank=True, help_text="The Batch API batch this line belongs to.")

    # The routing decision (routing/services.py): model_requested is what the caller sent (a name or
    # "auto"), model_served what answered; route_model is the router's pick before a downgrade budget.
    route_tier = models.PositiveSmallIntegerField(null=True, blank=True,
                                                  help_text="Tier the request was served at.")
    route_model = models.CharField(max_length=100, blank=True, help_text="Model the router chose.")
    route_reason = models.CharField(max_length=32, blank=True,
                                    help_text="Why: explicit, classifier, low_confidence, quality_high, min_tier, "
                                              "nearest_tier or budget_cap.")
    route_score = models.FloatField(null=True, blank=True,
                                    help_text="The classifier's probability for its tier (auto only).")

    # Outbox state. A batch is claimed (ship_batch set) before it is sent, so a
    # replay after a crash re-sends exactly the same rows with the same dedup token.
    ship_batch = models.UUIDField(null=True, blank=True, db_index=True)
    ship_claimed_at = models.DateTimeField(null=True, blank=True)
    shipped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "created_at"]),
            models.Index(fields=["created_at"], condition=models.Q(shipped_at__isnull=True), name="usage_unshipped"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_served or self.model_requested} {self.cost_total}"
