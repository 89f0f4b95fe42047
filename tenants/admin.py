from django.contrib import admin, messages
from django.db import models
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .models import ApiKey, Feature, Membership, Organization


class FeatureInline(admin.TabularInline):
    model = Feature
    extra = 0


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "timezone", "requests_per_minute", "tokens_per_minute", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [FeatureInline, MembershipInline]  # budgets.admin adds its budgets
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Feature)
class FeatureAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "organization"]
    list_filter = ["organization"]
    search_fields = ["slug", "name", "organization__slug"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role"]
    list_filter = ["role", "organization"]
    autocomplete_fields = ["user", "organization"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "key_prefix", "default_feature", "state", "created_at", "last_used_at"]
    list_filter = ["organization", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "organization__slug"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at"]
    autocomplete_fields = ["organization", "user"]
    actions = ["rotate_selected", "revoke_selected"]

    def get_fields(self, request, obj=None):
        fields = ["organization", "name", "default_feature", "user", "expires_at", "requests_per_minute",
                  "tokens_per_minute"]
        if obj is not None:
            fields += ["revoked_at", "key_prefix", "created_at", "last_used_at"]
        return fields

    @admin.display(description="key")
    def key_prefix(self, obj):
        return f"{services.KEY_PREFIX}{obj.prefix}-…" if obj.prefix else "—"

    @admin.display(description="state")
    def state(self, obj):
        if obj.revoked_at:
            return format_html('<span style="color:#b00">revoked</span>')
        if obj.expires_at and obj.expires_at <= timezone.now():
            return format_html('<span style="color:#b60">expired</span>')
        return format_html('<span style="color:#080">active</span>')

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        prefix, plaintext = services.generate_key_material()
        obj.prefix = prefix
        obj.secret_hash = services.hash_secret(plaintext)
        super().save_model(request, obj, form, change)
        self.message_user(
            request,
            format_html(
                "Copy this API key now; it will not be shown again: <code style='user-select:all'>{}</code>",
                plaintext,
            ),
            level=messages.WARNING,
        )

    @admin.action(description="Rotate selected API keys (new keys; the old ones keep working for the overlap)")
    def rotate_selected(self, request, queryset):
        for key in queryset:
            try:
                issued = services.rotate_api_key(key)
            except ValueError as exc:
                self.message_user(request, f"{key}: {exc}", level=messages.ERROR)
                continue
            self.message_user(
                request,
                format_html("New key for {} (the old one works until {} UTC); copy it now, it will not be shown "
                            "again: <code style='user-select:all'>{}</code>",
                            key.name, f"{services.ApiKey.objects.get(pk=key.pk).expires_at:%Y-%m-%d %H:%M}",
                            issued.plaintext),
                level=messages.WARNING,
            )

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request, queryset):
        prefixes = list(queryset.values_list("prefix", flat=True))
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        for prefix in prefixes:  # update() sends no signals
            services.forget_cached_keys(prefix)
        self.message_user(request, f"Revoked {count} key(s).")
