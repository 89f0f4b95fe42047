from django.contrib import admin

from .models import PoolScaling, ScalingDecision


@admin.register(PoolScaling)
class PoolScalingAdmin(admin.ModelAdmin):
    list_display = ("pool", "enabled", "min_replicas", "max_replicas", "target_busy_share", "ttft_p95_slo_s",
                    "desired_replicas", "decided_at", "last_reason")
    list_filter = ("enabled",)
    readonly_fields = ("desired_replicas", "decided_at", "last_reason", "state")
    fieldsets = (
        (None, {"fields": ("pool", "enabled", "min_replicas", "max_replicas")}),
        ("Target and SLO", {"fields": ("target_busy_share", "hysteresis", "ttft_p95_slo_s", "tokens_per_s_slo",
                                       "completion_window_s", "deadline_margin", "replica_tokens_per_s")}),
        ("Pace", {"fields": ("scale_up_cooldown_s", "scale_down_cooldown_s", "warmup_s", "max_step_up",
                             "max_step_down")}),
        ("Kubernetes", {"fields": ("kubernetes_namespace", "kubernetes_deployment")}),
        ("Latest decision", {"fields": ("desired_replicas", "decided_at", "last_reason", "state")}),
    )


@admin.register(ScalingDecision)
class ScalingDecisionAdmin(admin.ModelAdmin):
    """The record of every change the recommender made: read-only."""

    list_display = ("at", "pool", "current", "previous", "desired", "needed", "warming", "reason", "applied")
    list_filter = ("pool",)
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
