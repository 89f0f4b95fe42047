from django.contrib import admin
from django.db import models
from django.utils import timezone

from core.admin_money import MoneyInput, money_column
from core.money import format_usd

from .models import CatalogModel, ChargebackPolicy, PoolRate, Price, UsageRecord


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0
    ordering = ["-effective_from"]
    formfield_overrides = {models.DecimalField: {"widget": MoneyInput}}


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    list_display = ["name", "tier", "context_window", "current_price", "is_active"]
    list_filter = ["is_active", "tier"]
    search_fields = ["name", "description"]
    inlines = [PriceInline]

    @admin.display(description="price in/out per 1M")
    def current_price(self, obj):
        price = obj.prices.filter(effective_from__lte=timezone.now()).order_by("-effective_from").first()
        return f"{format_usd(price.input_per_mtok)} / {format_usd(price.output_per_mtok)}" if price else "— (not served)"


@admin.register(PoolRate)
class PoolRateAdmin(admin.ModelAdmin):
    """GPU pool cost: add a row to change a rate; history keeps the old one."""

    list_display = ["pool", "effective_from", "usd_per_gpu_hour_usd", "gpus", "gpus_per_replica"]
    list_filter = ["pool"]
    usd_per_gpu_hour_usd = money_column("usd_per_gpu_hour", "$ per GPU-hour")
    formfield_overrides = {models.DecimalField: {"widget": MoneyInput}}
    ordering = ["pool", "-effective_from"]


@admin.register(ChargebackPolicy)
class ChargebackPolicyAdmin(admin.ModelAdmin):
    list_display = ["organization", "mode"]
    list_filter = ["mode"]
    autocomplete_fields = ["organization"]


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The ledger is append-only: admins can read and filter it, never edit it."""

    list_display = ["created_at", "organization", "feature", "model_served", "pool", "status", "input_tokens",
                    "output_tokens", "cost_total_usd", "cost_retry_usd", "cost_escalation_usd", "duration_ms",
                    "shipped"]
    list_filter = ["status", "attempt_kind", "chargeback_mode", "organization", "model_served", "pool", "streamed",
                   "cache_hit"]
    search_fields = ["request_id", "trace_id", "feature"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]
    show_full_result_count = False
    # Exact (a request costs millionths of a dollar): $0.000012, never 0.000012000.
    cost_total_usd = money_column("cost_total", "cost")
    cost_retry_usd = money_column("cost_retry", "retry (not billed)")
    cost_escalation_usd = money_column("cost_escalation", "escalation")

    @admin.display(boolean=True, description="shipped")
    def shipped(self, obj):
        return obj.shipped_at is not None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
