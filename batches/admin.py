from django.contrib import admin

from .models import Batch, BatchFile, BatchLine


class BatchLineInline(admin.TabularInline):
    model = BatchLine
    fields = ["line_number", "custom_id", "status", "status_code", "request_id", "finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    max_num = 0
    ordering = ["line_number"]


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    """Progress of every batch: its counts move as lines finish (the batch object's request_counts)."""

    list_display = ["id", "organization", "endpoint", "status", "request_total", "request_completed",
                    "request_failed", "progress", "created_at", "completed_at"]
    list_filter = ["status", "endpoint"]
    search_fields = ["id", "organization__slug", "input_file_id"]
    readonly_fields = [f.name for f in Batch._meta.concrete_fields]
    inlines = [BatchLineInline]

    @admin.display(description="done")
    def progress(self, obj: Batch) -> str:
        if not obj.request_total:
            return "—"
        return f"{100 * (obj.request_completed + obj.request_failed) // obj.request_total}%"

    def has_add_permission(self, request):
        return False  # batches are created through /v1/batches, by an org's key


@admin.register(BatchFile)
class BatchFileAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "purpose", "filename", "bytes", "created_at"]
    list_filter = ["purpose"]
    search_fields = ["id", "filename", "organization__slug"]
    exclude = ["content"]
    readonly_fields = ["id", "organization", "purpose", "filename", "bytes", "created_at"]

    def has_add_permission(self, request):
        return False
