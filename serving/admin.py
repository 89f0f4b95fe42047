import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.utils import timezone

from metering.models import PoolRate

from .models import Deployment, Pool, Replica

logger = logging.getLogger(__name__)


class ReplicaInline(admin.TabularInline):
    model = Replica
    extra = 1


@dataclass(frozen=True)
class PoolWithoutRow:
    """A pool the gateway runs or has billed that no Pool row defines (shown read-only in the admin)."""

    name: str
    why: str
    kind: str = ""
    max_in_flight_per_replica: int | None = None
    max_queue: int | None = None
    max_batch_wait_ms: float | None = None
    has_rate: bool = False
    requests_30_days: int | None = None


def pools_without_rows() -> tuple[list[PoolWithoutRow], str]:
    """The pools the dashboards show that the Pool table does not list, and a note if usage could not be read.

    The in-process defaults are built from settings when no deployment names a pool
    (serving/pools.py), so they have no row; a row of the same name would not change them
    unless a deployment uses it. Creating rows on migrate would therefore show settings that
    do not apply, so they are listed here, read-only, with the settings they run with.
    """
    # Imported here: every process loads the admin at start, and these bring the engines and ClickHouse client.
    from metering import queries

    from . import pools as runtime

    rows = set(Pool.objects.values_list("name", flat=True))
    found: dict[str, dict] = {}
    if settings.TOLLGATE_ENGINE == "cpu":
        # The same settings serving.pools gives the default pool (its helper, so they cannot drift apart).
        config = runtime._default_pool(runtime.DEFAULT_POOL, "interactive", settings.TOLLGATE_CPU_MAX_NUM_SEQS)
        found[config.name] = {"why": "in-process default: serves every model without a deployment",
                              **_settings_of(config)}
    if settings.TOLLGATE_EMBEDDINGS_IN_PROCESS:
        config = runtime._default_pool(runtime.EMBEDDING_POOL, "embedding", settings.TOLLGATE_EMBEDDING_MAX_BATCH)
        found[config.name] = {"why": "in-process default: the embedding model without a deployment",
                              **_settings_of(config)}
    rated = set(PoolRate.objects.values_list("pool", flat=True))
    for name in rated:
        found.setdefault(name, {"why": "has a GPU rate (metering › pool rates)"})
    note = ""
    usage: dict[str, int] = {}
    try:
        now = timezone.now()
        for row in queries.usage_summary(queries.UsageFilter(start=now - timedelta(days=30), end=now), ["pool"],
                                         measures=["requests"]):
            if row["pool"]:
                usage[row["pool"]] = row["requests"]
    except Exception as exc:  # the admin stays usable while the analytics store is away
        logger.warning("pools admin: usage not read: %s", exc)
        note = f"Usage could not be read from ClickHouse ({exc.__class__.__name__}); pools seen only there are missing."
    for name in usage:
        found.setdefault(name, {"why": "recorded on usage in the last 30 days"})
    listed = [PoolWithoutRow(name=name, has_rate=name in rated, requests_30_days=usage.get(name), **fields)
              for name, fields in sorted(found.items()) if name not in rows]
    return listed, note


def _settings_of(config) -> dict:
    return {"kind": config.kind, "max_in_flight_per_replica": config.max_in_flight_per_replica,
            "max_queue": config.max_queue, "max_batch_wait_ms": config.max_batch_wait_ms}


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "max_in_flight_per_replica", "max_queue", "max_batch_wait_ms")

    def changelist_view(self, request, extra_context=None):
        unlisted, note = pools_without_rows()
        extra_context = {**(extra_context or {}), "pools_without_rows": unlisted, "pools_note": note}
        return super().changelist_view(request, extra_context)


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("model", "pool", "enabled")
    list_filter = ("pool", "enabled")
    inlines = [ReplicaInline]
