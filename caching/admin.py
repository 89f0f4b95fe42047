from django.contrib import admin

from .models import CachePolicy, SemanticEntry
from .services import purge


@admin.register(CachePolicy)
class CachePolicyAdmin(admin.ModelAdmin):
    list_display = ["organization", "feature", "exact_enabled", "semantic_enabled", "embeddings_enabled", "ttl_s",
                    "hit_price"]
    list_filter = ["exact_enabled", "semantic_enabled", "embeddings_enabled"]
    search_fields = ["organization__slug", "feature"]
    actions = ["purge_cached_answers"]

    @admin.action(description="Purge the cached answers of the selected policies (their feature, or the whole org)")
    def purge_cached_answers(self, request, queryset):
        for policy in queryset:
            purge(policy.organization_id, policy.feature or None)
        self.message_user(request, f"Purged the cache of {queryset.count()} org(s) or feature(s).")


@admin.register(SemanticEntry)
class SemanticEntryAdmin(admin.ModelAdmin):
    list_display = ["organization", "feature", "model", "question", "created_at", "expires_at"]
    list_filter = ["model"]
    search_fields = ["organization__slug", "feature", "question"]
    exclude = ["vector"]
    readonly_fields = ["organization", "feature", "partition", "model", "api_key", "question", "body", "created_at",
                       "expires_at"]

    def has_add_permission(self, request):
        return False  # entries come from answered requests only
