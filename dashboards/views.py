from __future__ import annotations

import json
import zoneinfo
from datetime import timedelta

import plotly.io as pio
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from budgets.services import budget_statuses
from metering import queries
from tenants.models import Organization
from tenants.services import can_view_organization, organizations_managed_by

from . import figures

PERIODS = {"7": 7, "30": 30, "90": 90}


@login_required
def index(request):
    orgs = organizations_managed_by(request.user)
    if len(orgs) == 1:
        return redirect("dashboards:org", org_slug=orgs[0].slug)
    return render(request, "dashboards/index.html", {"orgs": orgs})


@login_required
def org_dashboard(request, org_slug: str):
    org = get_object_or_404(Organization, slug=org_slug)
    if not can_view_organization(request.user, org):
        # 404, not 403: a manager must not learn which other orgs exist.
        raise Http404("No such organization.")
    days_key = request.GET.get("days", "30")
    days = PERIODS.get(days_key, 30)
    now = timezone.now()
    end = now
    start = now - timedelta(days=days)
    tz = org.timezone

    totals = queries.usage_totals(org.pk, start, end)
    by_feature = queries.spend_by("feature", org.pk, start, end)
    by_model = queries.spend_by("model", org.pk, start, end)
    local_end = timezone.localtime(end, timezone=zoneinfo.ZoneInfo(tz)).date()
    local_start = timezone.localtime(start, timezone=zoneinfo.ZoneInfo(tz)).date()
    charts = {
        "spend-over-time": figures.spend_over_time(queries.spend_by_day(org.pk, start, end, tz), local_start,
                                                   local_end),
        "spend-by-feature": figures.spend_by_key(by_feature, "Spend by feature", "#7c3aed"),
        "spend-by-model": figures.spend_by_key(by_model, "Spend by model", "#059669"),
    }
    context = {
        "org": org,
        "orgs": organizations_managed_by(request.user),
        "days": days,
        "periods": PERIODS.values(),
        "totals": totals,
        "by_feature": by_feature,
        "by_model": by_model,
        "budgets": budget_statuses(org.pk, now),
        # Plain JSON types (plotly's encoder handles dates and numpy), embedded with json_script.
        "charts": [{"data_id": f"{name}-data", "figure": json.loads(pio.to_json(fig, validate=False))}
                   for name, fig in charts.items()],
    }
    return render(request, "dashboards/org.html", context)

