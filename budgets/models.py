"""Budgets, their per-period counters and reservations, and the alerts they raise.

A Budget says how much one scope (an organization, one of its features, one
API key or one user) may spend per period. What has been spent and what is
reserved by requests in flight live in one BudgetCounter row per budget and
period window; requests lock those rows to reserve and to settle (see
budgets/services.py and docs/architecture.md).
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.money import format_decimal, format_usd

MONEY = {"max_digits": 20, "decimal_places": 9}
DEFAULT_THRESHOLDS = "50,80,100"


def parse_thresholds(raw: str) -> list[int]:
    """"50, 80,100" -> [50, 80, 100] (sorted, unique). Raises ValueError on anything else."""
    values = sorted({int(part) for part in raw.replace(" ", "").split(",") if part})
    if not values or any(v < 1 or v > 1000 for v in values):
        raise ValueError("thresholds are whole percentages between 1 and 1000")
    return values


def validate_thresholds(raw: str) -> None:
    try:
        parse_thresholds(raw)
    except ValueError:
        raise ValidationError("Give whole percentages separated by commas, for example 50,80,100.")


class Budget(models.Model):
    """A spending limit for one scope of an organization, per calendar period or a fixed date range."""

    class Period(models.TextChoices):
        DAILY = "daily", "Daily (calendar, org time zone)"
        WEEKLY = "weekly", "Weekly (Monday to Sunday, org time zone)"
        MONTHLY = "monthly", "Monthly (calendar, org time zone)"
        FIXED = "fixed", "Fixed date range"

    class Action(models.TextChoices):
        BLOCK = "block", "Block: refuse requests that could pass the budget"
        DOWNGRADE = "downgrade", "Downgrade: keep serving on the cheapest model with a lower output cap"
        NOTIFY = "notify", "Notify only"

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="budgets")
    feature = models.ForeignKey(
        "tenants.Feature", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
        help_text="Set at most one of feature, API key and user; leave all empty to cover the whole organization.",
    )
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="budgets")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="budgets")
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    starts_at = models.DateTimeField(null=True, blank=True, help_text="Fixed date range only: first instant.")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="Fixed date range only: end (exclusive).")
    amount = models.DecimalField(**MONEY, help_text="USD per period")
    thresholds = models.CharField(
        max_length=100, default=DEFAULT_THRESHOLDS, validators=[validate_thresholds],
        help_text="Percentages of the amount that raise an alert, e.g. 50,80,100.",
    )
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.BLOCK,
                              help_text="What happens when the budget is used up.")
    downgrade_at_percent = models.PositiveSmallIntegerField(
        default=100, help_text="Downgrade action only: route to the cheapest model from this share of the amount.",
    )
    downgrade_max_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Downgrade action only: output cap for downgraded requests.",
    )
    is_active = models.BooleanField(default=True, help_text="Paused budgets are neither enforced nor alerted.")
    reset_at = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="Set by the reset action: the current period counts spend from this instant only.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["organization", "feature", "pk"]
        constraints = [
            models.CheckConstraint(
                name="budget_has_at_most_one_narrow_scope",
                condition=(Q(feature__isnull=True, api_key__isnull=True)
                           | Q(feature__isnull=True, user__isnull=True)
                           | Q(api_key__isnull=True, user__isnull=True)),
            ),
            models.CheckConstraint(name="budget_amount_not_negative", condition=Q(amount__gte=0)),
        ]

    def __str__(self) -> str:
        return f"{self.scope_label}: ${format_decimal(self.amount)} {self.period}"

    @property
    def scope_kind(self) -> str:
        if self.feature_id:
            return "feature"
        if self.api_key_id:
            return "api key"
        if self.user_id:
            return "user"
        return "organization"

    @property
    def scope_label(self) -> str:
        if self.feature_id:
            return f"{self.organization.slug}/{self.feature.slug}"
        if self.api_key_id:
            return f"{self.organization.slug} key {self.api_key.name}"
        if self.user_id:
            return f"{self.organization.slug} user {self.user.get_username()}"
        return self.organization.slug

    @property
    def threshold_percents(self) -> list[int]:
        try:
            return parse_thresholds(self.thresholds)
        except ValueError:
            return parse_thresholds(DEFAULT_THRESHOLDS)

    def clean(self) -> None:
        narrow = [name for name in ("feature_id", "api_key_id", "user_id") if getattr(self, name)]
        if len(narrow) > 1:
            raise ValidationError("A budget covers an organization, or one feature, API key or user of it.")
        if self.feature_id and self.feature.organization_id != self.organization_id:
            raise ValidationError({"feature": "The feature must belong to the budget's organization."})
        if self.api_key_id and self.api_key.organization_id != self.organization_id:
            raise ValidationError({"api_key": "The API key must belong to the budget's organization."})
        if self.amount is not None and self.amount < 0:
            raise ValidationError({"amount": "A budget cannot be negative."})
        if self.period == self.Period.FIXED:
            if not self.starts_at or not self.ends_at or self.ends_at <= self.starts_at:
                raise ValidationError({"ends_at": "A fixed range needs a start and a later end."})


class BudgetCounter(models.Model):
    """Spend and reservations of one budget in one period window. Rebuildable from the ledger."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="counters")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    spent = models.DecimalField(**MONEY, default=Decimal(0))
    reserved = models.DecimalField(**MONEY, default=Decimal(0))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "window_start"], name="one_counter_per_window")]

    def __str__(self) -> str:
        return f"{self.budget_id} from {self.window_start:%Y-%m-%d %H:%M}: {self.spent} + {self.reserved} reserved"


class BudgetReservation(models.Model):
    """The worst-case cost a request in flight holds against one counter until it settles."""

    counter = models.ForeignKey(BudgetCounter, on_delete=models.CASCADE, related_name="reservations")
    request_id = models.CharField(max_length=64)
    amount = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["created_at"])]


class Alert(models.Model):
    """One alert per budget, kind, threshold and period window (a unique constraint, so never twice)."""

    class Kind(models.TextChoices):
        THRESHOLD = "threshold", "threshold crossed"
        FORECAST = "forecast", "forecast to exceed"

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    threshold_percent = models.PositiveSmallIntegerField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    amount = models.DecimalField(**MONEY)
    spent = models.DecimalField(**MONEY, help_text="Spend in the window when the alert was raised.")
    forecast = models.DecimalField(**MONEY, null=True, blank=True,
                                   help_text="Projected spend at the end of the window (forecast alerts).")
    created_at = models.DateTimeField(default=timezone.now)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "kind", "threshold_percent", "window_start"],
                                    name="one_alert_per_budget_threshold_window"),
        ]

    def __str__(self) -> str:
        return f"{self.budget.scope_label}: {self.headline}"

    @property
    def headline(self) -> str:
        if self.kind == self.Kind.FORECAST:
            return f"forecast to exceed ${format_decimal(self.amount)} (projected {format_usd(self.forecast)})"
        return f"{self.threshold_percent}% of ${format_decimal(self.amount)} reached"


class AlertDelivery(models.Model):
    """How one alert went out on one channel. Celery tasks move it from pending to sent or failed."""

    class Channel(models.TextChoices):
        EMAIL = "email"
        WEBHOOK = "webhook"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"
        SKIPPED = "skipped", "skipped (nowhere to send)"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alert", "channel"], name="one_delivery_per_channel")]

    def __str__(self) -> str:
        return f"{self.channel} {self.status}"
