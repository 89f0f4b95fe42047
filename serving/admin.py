from django.contrib import admin

from .models import Deployment, Pool, Replica


class ReplicaInline(admin.TabularInline):
    model = Replica
    extra = 1


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "max_in_flight_per_replica", "max_queue", "max_batch_wait_ms")


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("model", "pool", "enabled")
    list_filter = ("pool", "enabled")
    inlines = [ReplicaInline]
