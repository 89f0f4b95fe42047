from __future__ import annotations

import json
import zoneinfo
from datetime import datetime, timedelta

import plotly.io as pio
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from budgets.services import budget_statuses
from metering import queries
from metering.costs import chargeback_mode
from metering.models import ChargebackMode
from tenants.models import Organization
from tenants.services import can_view_organization, organizations_managed_by

from . import figures

PERIODS = {"7": 7, "30": 30, "90": 90}


def _charts(charts: dict) -> list[dict]:
    # Plain JSON types (plotly's encoder handles dates and numpy), embedded with json_script.
    return [{"data_id": f"{name}-data", "figure": json.loads(pio.to_json(fig, validate=False))}
            for name, fig in charts.items()]


def _period(request, whole_hours: bool = False) -> tuple[int, datetime, datetime]:
    days = PERIODS.get(request.GET.get("days", "30"), 30)
    end = timezone.now()
    if whole_hours:
        # End at the next full hour: still everything up to now, but every hour of the range is whole,
        # so across all orgs only the rollups are read (the raw table's edge hours cost most of the time).
        end = end.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return days, end - timedelta(days=days), end


@login_required
def index(request):
    orgs = organizations_managed_by(request.user)
    # Staff stay on the index: it is where the all-orgs overview is linked from.
    if len(orgs) == 1 and not request.user.is_staff:
        return redirect("dashboards:org", org_slug=orgs[0].slug)
    return render(request, "dashboards/index.html", {"orgs": orgs})


@login_required
def org_dashboard(request, org_slug: str):
    org = get_object_or_404(Organization, slug=org_slug)
    if not can_view_organization(request.user, org):
        # 404, not 403: a manager must not learn which other orgs exist.
        raise Http404("No such organization.")
    days, start, end = _period(request)
    tz = org.timezone

    totals = queries.usage_totals(org.pk, start, end)
    by_feature = queries.spend_by("feature", org.pk, start, end)
    by_model = queries.spend_by("model", org.pk, start, end)
    local_end = timezone.localtime(end, timezone=zoneinfo.ZoneInfo(tz)).date()
    local_start = timezone.localtime(start, timezone=zoneinfo.ZoneInfo(tz)).date()
    breakdown = queries.cost_breakdown((org.pk,), start, end)
    components, gpu_pools = breakdown.components, breakdown.pools
    charts = {
        "spend-over-time": figures.spend_over_time(queries.spend_by_day(org.pk, start, end, tz), local_start,
                                                   local_end),
        "spend-by-feature": figures.spend_by_key(by_feature, "Spend by feature", "#7c3aed"),
        "spend-by-model": figures.spend_by_key(by_model, "Spend by model", "#059669"),
        "cost-components": figures.cost_components(components),
        "gpu-by-pool": figures.gpu_by_pool(gpu_pools),
    }
    context = {
        "org": org,
        "orgs": organizations_managed_by(request.user),
        "days": days,
        "periods": PERIODS.values(),
        "totals": totals,
        "by_feature": by_feature,
        "by_model": by_model,
        "budgets": budget_statuses(org.pk, end),
        "components": components,
        "gpu_pools": gpu_pools,
        # Under GPU chargeback the GPU cost is what the org pays; under token prices it is only shown.
        "gpu_billed": chargeback_mode(org.pk) != ChargebackMode.TOKENS,
        "charts": _charts(charts),
    }
    return render(request, "dashboards/org.html", context)


@login_required
def staff_overview(request):
    """Every org's spend, retry cost and savings, and GPU utilization per pool. Staff only."""
    if not request.user.is_staff:
        raise PermissionDenied("Staff only.")
    days, start, end = _period(request, whole_hours=True)
    overview = queries.platform_overview(start, end)
    charts = {
        "spend-by-org": figures.spend_by_key(overview.by_org, "Spend by organization", "#2563eb"),
        "spend-by-model": figures.spend_by_key(overview.by_model, "Spend by model", "#059669"),
        "cost-components": figures.cost_components(overview.components),
        "gpu-by-pool": figures.gpu_by_pool(overview.pools),
        "pool-utilization": figures.pool_utilization(overview.pools),
    }
    return render(request, "dashboards/overview.html", {
        "days": days, "periods": PERIODS.values(), "start": start, "end": end, "by_org": overview.by_org,
        "by_model": overview.by_model, "components": overview.components, "gpu_pools": overview.pools,
        "charts": _charts(charts),
    })
