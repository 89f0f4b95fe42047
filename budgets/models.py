from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class Budget(models.Model):
    """A spending limit for an organization, or for one feature of it, per calendar month."""

    class Period(models.TextChoices):
        MONTHLY = "monthly", "Monthly (calendar, org time zone)"

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="budgets")
    feature = models.ForeignKey(
        "tenants.Feature", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
        help_text="Leave empty to cover the whole organization.",
    )
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    amount = models.DecimalField(max_digits=14, decimal_places=2, help_text="USD per period")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["organization", "feature"]

    def __str__(self) -> str:
        return f"{self.scope_label}: ${self.amount} {self.get_period_display().split(' ')[0].lower()}"

    @property
    def scope_label(self) -> str:
        if self.feature_id:
            return f"{self.organization.slug}/{self.feature.slug}"
        return self.organization.slug

    def clean(self) -> None:
        if self.feature_id and self.feature.organization_id != self.organization_id:
            raise ValidationError({"feature": "The feature must belong to the budget's organization."})
        if self.amount is not None and self.amount < 0:
            raise ValidationError({"amount": "A budget cannot be negative."})
