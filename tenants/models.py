"""Who is calling: organizations, their people, their features and their API keys."""

from __future__ import annotations

import secrets
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone as dj_timezone


def validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"{value!r} is not a known time zone") from exc


def default_org_requests_per_minute() -> int | None:
    return settings.TOLLGATE_DEFAULT_ORG_REQUESTS_PER_MINUTE


def default_org_tokens_per_minute() -> int | None:
    return settings.TOLLGATE_DEFAULT_ORG_TOKENS_PER_MINUTE


def default_key_requests_per_minute() -> int | None:
    return settings.TOLLGATE_DEFAULT_KEY_REQUESTS_PER_MINUTE


def default_key_tokens_per_minute() -> int | None:
    return settings.TOLLGATE_DEFAULT_KEY_TOKENS_PER_MINUTE


class Organization(models.Model):
    slug = models.SlugField(unique=True, help_text="Short name used in URLs and reports.")
    name = models.CharField(max_length=200)
    # Used only for budget period boundaries and display; everything is stored in UTC.
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    # Where budget alerts go (budgets.delivery). Managers with an email address always get them.
    alert_emails = models.CharField(
        max_length=1000, blank=True, help_text="Extra addresses for budget alerts, separated by commas.",
    )
    alert_webhook_url = models.URLField(
        max_length=500, blank=True, help_text="Budget alerts are POSTed here as JSON, signed with the secret below.",
    )
    alert_webhook_secret = models.CharField(
        max_length=100, blank=True,
        help_text="Shared secret for the X-Tollgate-Signature HMAC. Generated when a webhook URL is first set.",
    )
    # Rate limits for the whole org, every key together (serving/ratelimits.py). Blank: unlimited. New orgs
    # start with TOLLGATE_DEFAULT_ORG_*_PER_MINUTE (unset: blank).
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, default=default_org_requests_per_minute, help_text="Most /v1 requests per minute for the whole organization. Blank: unlimited.",
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, default=default_org_tokens_per_minute,
        help_text="Most tokens per minute for the whole organization (prompt + max_tokens, counted when a request "
                  "arrives). Blank: unlimited.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if self.alert_webhook_url and not self.alert_webhook_secret:
            self.alert_webhook_secret = generate_webhook_secret()
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "alert_webhook_secret"}
        super().save(*args, **kwargs)


def generate_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class Membership(models.Model):
    class Role(models.TextChoices):
        MANAGER = "manager", "Manager"
        MEMBER = "member", "Member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="one_membership_per_org")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Feature(models.Model):
    """An attribution tag inside an org (e.g. "support-bot"); selected with X-Feature."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="features")
    slug = models.SlugField()
    name = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["organization", "slug"]
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="feature_slug_unique_in_org")]

    def __str__(self) -> str:
        return f"{self.organization.slug}/{self.slug}"


class ApiKey(models.Model):
    """A tenant's key. Only a hash of the secret is stored; the full key is shown once."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    # Public, unique part of the key, used to find the row without scanning hashes.
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    # "hmac-sha256:<hex>" keyed with TOLLGATE_API_KEY_HASH_SECRET; a bare 64-hex value is a key issued before
    # that (plain SHA-256), rehashed the first time it authenticates (tenants.services).
    secret_hash = models.CharField(max_length=100, editable=False)
    default_feature = models.ForeignKey(
        Feature, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Feature billed when a request sends no X-Feature header.",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="api_keys",
        help_text="Person the key's usage is attributed to, if any.",
    )
    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Rate limits for this key alone, on top of its organization's. Blank: only the organization's apply.
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, default=default_key_requests_per_minute,
        help_text="Most /v1 requests per minute with this key. Blank: unlimited.",
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, default=default_key_tokens_per_minute,
        help_text="Most tokens per minute with this key (prompt + max_tokens, counted when a request arrives). "
                  "Blank: unlimited.",
    )
    # Set on the new key by a rotation: the key it replaces (which then expires after the overlap).
    replaces = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                 editable=False)

    class Meta:
        ordering = ["organization", "name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        if self.default_feature_id and self.default_feature.organization_id != self.organization_id:
            raise ValidationError({"default_feature": "The default feature must belong to the key's organization."})

    @property
    def is_active(self) -> bool:
        now = dj_timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
