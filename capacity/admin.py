from django.contrib import admin

from .models import CapacityPlan


@admin.register(CapacityPlan)
class CapacityPlanAdmin(admin.ModelAdmin):
    list_display = ("created_at", "trace")
    readonly_fields = ("created_at", "trace", "result")
