from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from . import services
from .models import Budget


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["scope", "period", "amount", "spent_this_period", "used", "is_active"]
    list_filter = ["organization", "is_active", "period"]
    autocomplete_fields = ["organization"]
    list_select_related = ["organization", "feature"]

    @admin.display(description="scope")
    def scope(self, obj):
        return obj.scope_label

    def _status(self, obj):
        return services.budget_status(obj, timezone.now())

    @admin.display(description="spent this period")
    def spent_this_period(self, obj):
        return f"${self._status(obj).spent:.2f}"

    @admin.display(description="used")
    def used(self, obj):
        pct = self._status(obj).fraction_used * 100
        colour = "#b00" if pct >= 100 else "#b60" if pct >= 80 else "#080"
        return format_html('<span style="color:{}">{}%</span>', colour, f"{pct:.0f}")
