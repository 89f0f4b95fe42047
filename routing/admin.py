from django.contrib import admin

from .models import RoutingPolicy


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(admin.ModelAdmin):
    list_display = ("organization", "scope", "default_tier", "min_tier", "allowed", "escalation_limit",
                    "max_tokens_cap", "updated_at")
    list_filter = ("organization", "default_tier", "min_tier", "validate_json", "escalate_on_truncation",
                   "compact_tool_output")
    search_fields = ("organization__slug", "organization__name", "feature__slug")
    list_select_related = ("organization", "feature")
    autocomplete_fields = ("organization",)
    filter_horizontal = ("allowed_models",)
    readonly_fields = ("updated_at",)
    fieldsets = (
        (None, {"fields": ("organization", "feature"),
                "description": "One policy per organization, and optionally one per feature: a feature's "
                               "policy replaces the organization's for that feature's requests."}),
        ("Routing", {"fields": ("allowed_models", "default_tier", "min_tier", "classifier_min_confidence"),
                     "description": "Read by the router for every request: which models may serve, and how "
                                    "`model: \"auto\"` picks a tier."}),
        ("Escalation", {"fields": ("escalation_limit", "validate_json", "logprob_mean_threshold",
                                   "logprob_min_threshold", "escalate_on_truncation", "check_unsafe_content"),
                        "classes": ("collapse",),
                        "description": "For confidence-based escalation (validate the answer, retry one tier "
                                       "up). Stored now; read once escalation lands."}),
        ("Token optimization", {"fields": ("dedupe_system_prompts", "history_token_budget",
                                           "context_token_budget", "compact_tool_output", "max_tokens_cap"),
                                "classes": ("collapse",),
                                "description": "For the token-optimization stage. Stored now; read once it "
                                               "lands."}),
        ("History", {"fields": ("updated_at",)}),
    )

    @admin.display(description="scope", ordering="feature__slug")
    def scope(self, policy: RoutingPolicy) -> str:
        return f"feature {policy.feature.slug}" if policy.feature_id else "whole organization"

    @admin.display(description="allowed models")
    def allowed(self, policy: RoutingPolicy) -> str:
        names = [m.name for m in policy.allowed_models.all()]
        return ", ".join(names) if names else "all"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("allowed_models")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "feature":
            kwargs["queryset"] = db_field.related_model.objects.select_related("organization")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
