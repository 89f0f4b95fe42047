from __future__ import annotations

import json
from decimal import Decimal
from datetime import timedelta

import plotly.io as pio
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from autoscaling.services import desired_over_time, pool_overview
from budgets.services import budget_statuses
from capacity import figures as capacity_figures
from capacity.services import latest_plan
from metering import queries
from metering.costs import chargeback_mode
from metering.models import ChargebackMode
from serving.pools import replica_states
from tenants.models import ApiKey, Membership, Organization
from tenants.services import can_view_organization, organizations_managed_by

from . import figures, filters


def _charts(charts: dict) -> list[dict]:
    # Plain JSON types (plotly's encoder handles dates and numpy), embedded with json_script.
    return [{"data_id": f"{name}-data",
             "figure": {**json.loads(pio.to_json(fig, validate=False)), "config": figures.CHART_CONFIG}}
            for name, fig in charts.items()]


@login_required
def index(request):
    managed = organizations_managed_by(request.user)
    # Members (not managers) of an org see their own usage there.
    member_of = [m.organization for m in Membership.objects.filter(user=request.user, role=Membership.Role.MEMBER)
                 .select_related("organization").order_by("organization__slug") if m.organization not in managed]
    orgs = managed + member_of
    # Staff stay on the index: it is where the all-orgs overview is linked from.
    if len(orgs) == 1 and not request.user.is_staff:
        return redirect("dashboards:org", org_slug=orgs[0].slug)
    return render(request, "dashboards/index.html", {"orgs": orgs})


def _choices(org: Organization) -> dict:
    """What the filter form offers: the org's features, models in the catalog, its keys and members."""
    from django.contrib.auth import get_user_model

    from metering.models import CatalogModel

    users = get_user_model().objects.filter(memberships__organization=org).order_by("username")
    return {
        "features": list(org.features.order_by("slug").values_list("slug", flat=True)),
        "models": list(CatalogModel.objects.order_by("tier", "name").values_list("name", flat=True)),
        "keys": list(org.api_keys.order_by("name").values("pk", "name", "prefix")),
        "users": [{"pk": u.pk, "name": u.get_username()} for u in users],
    }


def _check_narrowing(org: Organization, view: filters.DashboardView, forced: dict | None = None) -> dict:
    """The narrowing to read with: the URL's, plus what the viewer is held to (a member: their own usage).

    A key or user of another org is a 404, as another org's page is (nothing to learn by guessing ids);
    so is a member asking for someone else's usage.
    """
    forced = forced or {}
    if "user_id" in forced and view.narrow.get("user_id") not in (None, forced["user_id"]):
        raise Http404("No such user in this organization.")
    key_id, user_id = view.narrow.get("api_key_id"), view.narrow.get("user_id")
    if key_id is not None and not ApiKey.objects.filter(pk=key_id, organization=org).exists():
        raise Http404("No such API key in this organization.")
    if user_id is not None and not Membership.objects.filter(user_id=user_id, organization=org).exists():
        raise Http404("No such user in this organization.")
    return {**view.narrow, **forced}


def _usage_csv_url(org: Organization, view: filters.DashboardView, narrow: dict) -> str:
    """The usage API's CSV of what the page shows: per day, feature and model, the same filters."""
    from django.urls import reverse
    from django.utils.http import urlencode

    params = {"org": org.slug, "start": view.start.isoformat(), "end": view.end.isoformat(), "tz": view.tz,
              "group_by": "day,feature,model", "format": "csv", **{
                  name: narrow[arg] for name, arg in
                  (("feature", "feature"), ("model", "model"), ("key", "api_key_id"), ("user", "user_id"))
                  if arg in narrow}}
    return f"{reverse('usage:summary')}?{urlencode(params)}"


@login_required
def org_dashboard(request, org_slug: str):
    org, forced = _viewable_org(request, org_slug, members=True)
    tz = org.timezone
    view = filters.read_view(request.GET, tz)
    context = {"org": org, "orgs": organizations_managed_by(request.user), "view": view, "member": bool(forced),
               "presets": filters.PRESETS, "max_days": filters.MAX_DAYS,
               "choices": {} if forced else _choices(org)}
    if view.errors:
        # Say what was wrong instead of quietly showing another period.
        return render(request, "dashboards/org.html", {**context, "charts": []}, status=400)
    narrow = _check_narrowing(org, view, forced)
    start, end = view.start, view.end

    totals = queries.usage_totals(org.pk, start, end, **narrow)
    # The period just before, as long: "spend vs the previous period" on the spend card.
    previous = queries.usage_totals(org.pk, start - (end - start), start, **narrow)
    by_feature = queries.spend_by("feature", org.pk, start, end, **narrow)
    by_model = queries.spend_by("model", org.pk, start, end, **narrow)
    by_key = queries.top_spenders("key", org.pk, start, end, **narrow)
    by_user = queries.top_spenders("user", org.pk, start, end, **narrow)
    breakdown = queries.cost_breakdown((org.pk,), start, end, **narrow)
    components, gpu_pools = breakdown.components, breakdown.pools
    charts = {
        "spend-over-time": figures.spend_over_time_stacked(
            queries.spend_by_day_and("feature", org.pk, start, end, tz, **narrow), view.first_day, view.last_day,
            tz, "feature"),
        "spend-by-feature": figures.spend_by_key(by_feature, "Spend by feature", "#7c3aed"),
        "spend-by-model": figures.spend_by_key(by_model, "Spend by model", "#059669"),
        "cost-components": figures.cost_components(components),
        "gpu-by-pool": figures.gpu_by_pool(gpu_pools),
    }
    context.update({
        "totals": totals,
        "previous": previous,
        "spend_change": ((totals.cost - previous.cost) / previous.cost) if previous.cost else None,
        "by_feature": by_feature,
        "by_model": by_model,
        "by_key": by_key,
        "by_user": by_user,
        # Budgets are the whole org's (or a scope's): for managers, not for a member seeing their own usage.
        "budgets": [] if forced else budget_statuses(org.pk, timezone.now()),
        "components": components,
        "gpu_pools": gpu_pools,
        # Under GPU chargeback the GPU cost is what the org pays; under token prices it is only shown.
        "gpu_billed": chargeback_mode(org.pk) != ChargebackMode.TOKENS,
        "csv_url": _usage_csv_url(org, view, narrow),
        "charts": _charts(charts),
    })
    return render(request, "dashboards/org.html", context)


@login_required
def staff_overview(request):
    """Every org's spend, retry cost and savings, and GPU utilization per pool. Staff only."""
    if not request.user.is_staff:
        raise PermissionDenied("Staff only.")
    view = filters.read_view(request.GET, "UTC")
    errors = list(view.errors)
    if view.narrow:
        # This page reads every org at once; narrowing is for one org's page (never silently ignored).
        given = sorted(view.params.keys() & {"feature", "model", "key", "user"})
        errors.append(f"The all-organizations page cannot be filtered by {', '.join(given)}; "
                      "open an organization's page to filter.")
    context = {"view": view, "presets": filters.PRESETS, "max_days": filters.MAX_DAYS, "errors": errors}
    if errors:
        return render(request, "dashboards/overview.html", {**context, "charts": []}, status=400)
    start, end = view.start, view.end
    if not view.custom:
        # End at the next full hour: still everything up to now, but every hour of the range is whole,
        # so across all orgs only the rollups are read (the raw table's edge hours cost most of the time).
        end = end.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        start = end - timedelta(days=view.days)
    overview = queries.platform_overview(start, end)
    charts = {
        "spend-by-org": figures.spend_by_key(overview.by_org, "Spend by organization", "#2563eb"),
        "spend-by-model": figures.spend_by_key(overview.by_model, "Spend by model", "#059669"),
        "cost-components": figures.cost_components(overview.components),
        "gpu-by-pool": figures.gpu_by_pool(overview.pools),
        "pool-utilization": figures.pool_utilization(overview.pools),
    }
    return render(request, "dashboards/overview.html", {
        **context, "start": start, "end": end, "by_org": overview.by_org,
        "by_model": overview.by_model, "components": overview.components, "gpu_pools": overview.pools,
        "charts": _charts(charts),
    })


def _statement_csv_url(org: Organization, month: filters.MonthView) -> str:
    """The usage API's CSV of the statement's lines (same period, feature × model), named for the month."""
    from django.urls import reverse
    from django.utils.http import urlencode

    params = {"org": org.slug, "start": month.start.isoformat(), "end": month.end.isoformat(),
              "group_by": "feature,model", "format": "csv"}
    return f"{reverse('usage:summary')}?{urlencode(params)}"


def _statement(org: Organization, month: filters.MonthView) -> dict:
    return {"org": org, "statement": queries.chargeback_statement(org.pk, month.start, month.end),
            "csv_url": _statement_csv_url(org, month)}


@login_required
def org_statement(request, org_slug: str):
    """The month's chargeback statement of one org: lines per feature × model, printable, with a CSV."""
    org = get_object_or_404(Organization, slug=org_slug)
    if not can_view_organization(request.user, org):
        raise Http404("No such organization.")
    month = filters.read_month(request.GET, org.timezone)
    context = {"org": org, "orgs": organizations_managed_by(request.user), "month": month}
    if month.errors:
        return render(request, "dashboards/statement.html", context, status=400)
    context["statements"] = [_statement(org, month)]
    return render(request, "dashboards/statement.html", context)


@login_required
def staff_statements(request):
    """Every org's statement for one month, each in its own time zone. Staff only."""
    if not request.user.is_staff:
        raise PermissionDenied("Staff only.")
    month = filters.read_month(request.GET, "UTC")
    context = {"month": month, "all_orgs": True}
    if month.errors:
        return render(request, "dashboards/statement.html", context, status=400)
    statements = []
    for org in Organization.objects.order_by("slug"):
        org_month = filters.read_month({"month": month.month}, org.timezone)
        statements.append({**_statement(org, org_month), "month": org_month})
    context["statements"] = statements
    return render(request, "dashboards/statement.html", context)


REQUEST_LOG_PAGE = 50


def _viewable_org(request, org_slug: str, *, members: bool = False) -> tuple[Organization, dict]:
    """The org, and the narrowing its viewer is held to: none for its managers and staff; with `members`,
    a member of the org sees their own usage only ({"user_id": them}). Anyone else: 404, not 403, so
    nobody learns which other orgs exist."""
    org = get_object_or_404(Organization, slug=org_slug)
    if can_view_organization(request.user, org):
        return org, {}
    if members and Membership.objects.filter(user=request.user, organization=org,
                                             role=Membership.Role.MEMBER).exists():
        return org, {"user_id": request.user.pk}
    raise Http404("No such organization.")


@login_required
def request_log(request, org_slug: str):
    """The org's attempts, newest first, 50 a page, with the dashboard's period and filters."""
    org, forced = _viewable_org(request, org_slug, members=True)
    view = filters.read_view(request.GET, org.timezone)
    page_number = request.GET.get("page", "1")
    errors = list(view.errors)
    if not page_number.isdigit() or int(page_number) < 1:
        errors.append(f"page: give a page number from 1 (you gave {page_number!r})")
    context = {"org": org, "orgs": organizations_managed_by(request.user), "view": view, "errors": errors,
               "presets": filters.PRESETS, "max_days": filters.MAX_DAYS, "choices": {} if forced else _choices(org)}
    if errors:
        return render(request, "dashboards/requests.html", context, status=400)
    narrow = _check_narrowing(org, view, forced)
    page = int(page_number)
    count, rows = queries.request_log(org.pk, view.start, view.end, limit=REQUEST_LOG_PAGE,
                                      offset=(page - 1) * REQUEST_LOG_PAGE, **narrow)
    pages = max(1, -(-count // REQUEST_LOG_PAGE))
    if page > pages:
        raise Http404("No such page.")
    context.update({"rows": rows, "count": count, "page": page, "pages": pages,
                    "previous_page": view.query_string(page=page - 1) if page > 1 else None,
                    "next_page": view.query_string(page=page + 1) if page < pages else None})
    return render(request, "dashboards/requests.html", context)


@login_required
def request_detail(request, org_slug: str, request_id: str):
    """One request: each attempt with its cost components, cache, route and trace id (from the ledger)."""
    org, forced = _viewable_org(request, org_slug, members=True)
    attempts = queries.request_attempts(org.pk, request_id)
    if forced and any(a.user_id != forced["user_id"] for a in attempts):
        attempts = []  # a member opens only their own requests
    if not attempts:
        raise Http404("No such request in this organization.")
    billed = sum((a.cost_total for a in attempts), Decimal(0))
    return render(request, "dashboards/request_detail.html", {
        "org": org, "orgs": organizations_managed_by(request.user), "request_id": request_id,
        "attempts": attempts, "billed": billed, "trace_id": next((a.trace_id for a in attempts if a.trace_id), ""),
        "back": request.GET.get("back", ""),
    })


@login_required
def retries(request, org_slug: str):
    """Retry cost (recorded, not billed) and escalation cost (billed) over time and by model."""
    org, forced = _viewable_org(request, org_slug, members=True)
    view = filters.read_view(request.GET, org.timezone)
    context = {"org": org, "orgs": organizations_managed_by(request.user), "view": view,
               "presets": filters.PRESETS, "max_days": filters.MAX_DAYS, "choices": {} if forced else _choices(org)}
    if view.errors:
        return render(request, "dashboards/retries.html", {**context, "charts": []}, status=400)
    narrow = _check_narrowing(org, view, forced)
    data = queries.retries_and_escalations(org.pk, view.start, view.end, org.timezone, **narrow)
    charts = {"retries-over-time": figures.retries_and_escalations_over_time(data.by_day, view.first_day,
                                                                             view.last_day, org.timezone)}
    return render(request, "dashboards/retries.html", {**context, "data": data, "charts": _charts(charts)})


# Where a breakdown row drills down to: the next dimension, filtered to the row.
DRILL_DOWN = {"feature": "model", "model": "key", "key": "user", "user": "feature"}
FILTER_PARAM = {"feature": "feature", "model": "model", "key": "key", "user": "user"}


@login_required
def breakdown(request, org_slug: str, dimension: str):
    """Features, models, keys or users: cost, tokens, requests, cost per request, latency, TTFT, errors."""
    org, forced = _viewable_org(request, org_slug, members=True)
    if dimension not in queries.BREAKDOWN_DIMENSIONS:
        raise Http404("No such breakdown.")
    view = filters.read_view(request.GET, org.timezone)
    context = {"org": org, "orgs": organizations_managed_by(request.user), "view": view, "dimension": dimension,
               "dimensions": queries.BREAKDOWN_DIMENSIONS, "presets": filters.PRESETS,
               "max_days": filters.MAX_DAYS, "choices": {} if forced else _choices(org)}
    if view.errors:
        return render(request, "dashboards/breakdown.html", context, status=400)
    narrow = _check_narrowing(org, view, forced)
    rows = queries.breakdown(dimension, org.pk, view.start, view.end, **narrow)
    following = DRILL_DOWN[dimension]
    param = FILTER_PARAM[dimension]
    context.update({
        "rows": [{"row": r, "drill": view.query_string(**{param: r.key})} for r in rows],
        "drills_to": following,
        # Back up: the same page without each filter that narrowed it (how a drill-down came here).
        "active_filters": [(name, view.params[name], view.query_string(**{name: None}))
                           for name in FILTER_PARAM.values() if view.params.get(name)],
    })
    return render(request, "dashboards/breakdown.html", context)


@login_required
def savings(request, org_slug: str):
    """What the cache and token optimization saved (not billed), per day and per feature, and hit rates."""
    org, forced = _viewable_org(request, org_slug, members=True)
    view = filters.read_view(request.GET, org.timezone)
    context = {"org": org, "orgs": organizations_managed_by(request.user), "view": view,
               "presets": filters.PRESETS, "max_days": filters.MAX_DAYS, "choices": {} if forced else _choices(org)}
    if view.errors:
        return render(request, "dashboards/savings.html", {**context, "charts": []}, status=400)
    narrow = _check_narrowing(org, view, forced)
    data = queries.savings(org.pk, view.start, view.end, org.timezone, **narrow)
    routing = queries.routing(org.pk, view.start, view.end, org.timezone, **narrow)
    days = view.first_day, view.last_day, org.timezone
    charts = {
        "savings-over-time": figures.savings_over_time(data.by_day, *days),
        "cache-hit-rate": figures.cache_hit_rate_over_time(data.by_day, *days),
        "routed-by-tier": figures.routed_share_by_tier_over_time(routing, *days),
        "routed-escalation-cost": figures.routed_escalation_cost_over_time(routing, *days),
    }
    return render(request, "dashboards/savings.html", {**context, "data": data, "routing": routing,
                                                       "charts": _charts(charts)})


def _budget_narrowing(budget) -> dict:
    """The usage a budget counts, as dashboard narrowing (feature, key or user; none: the whole org)."""
    if budget.feature_id:
        return {"feature": budget.feature.slug}
    if budget.api_key_id:
        return {"api_key_id": budget.api_key_id}
    if budget.user_id:
        return {"user_id": budget.user_id}
    return {}


@login_required
def budgets(request, org_slug: str):
    """Each budget in force: spend against the amount over the period, thresholds, forecast, downgrades and
    refusals, and the org's alert history (acknowledge from here)."""
    import zoneinfo

    from budgets.models import Budget

    org, _ = _viewable_org(request, org_slug)
    now = timezone.now()
    zone = zoneinfo.ZoneInfo(org.timezone)
    statuses = budget_statuses(org.pk, now)
    by_id = {b.pk: b for b in Budget.objects.filter(organization=org).select_related("feature", "api_key", "user")}
    charts, rows = {}, []
    for status in statuses:
        budget = by_id[status.budget_id]
        first = timezone.localtime(status.period_start, zone).date()
        last = timezone.localtime(status.period_end - timedelta(microseconds=1), zone).date()
        today = min(timezone.localtime(now, zone).date(), last)
        spent_by_day = queries.spend_by_day(org.pk, status.period_start, min(now, status.period_end), org.timezone,
                                            **_budget_narrowing(budget))
        charts[f"budget-{budget.pk}"] = figures.budget_burn(
            f"{status.scope_label}: spent against {budget.amount:.2f} USD", spent_by_day, first, today, last,
            status.amount, status.forecast, org.timezone)
        rows.append({"status": status, "thresholds": budget.threshold_percents, "chart": f"budget-{budget.pk}"})
    return render(request, "dashboards/budgets.html", {
        "org": org, "orgs": organizations_managed_by(request.user), "rows": rows, "budgets": statuses,
        "charts": _charts(charts),
    })


@login_required
def staff_gpu(request):
    """Each rated pool over the period: cost, busy and idle, utilization, and who pays it. Staff only."""
    if not request.user.is_staff:
        raise PermissionDenied("Staff only.")
    view = filters.read_view(request.GET, "UTC")
    errors = list(view.errors) + (["The GPU page cannot be filtered; it shows whole pools."] if view.narrow else [])
    context = {"view": view, "presets": filters.PRESETS, "max_days": filters.MAX_DAYS, "errors": errors}
    if errors:
        return render(request, "dashboards/gpu.html", {**context, "charts": []}, status=400)
    reports = queries.gpu_pool_reports(view.start, view.end)
    charts = {
        "gpu-utilization-over-time": figures.pool_utilization_over_time(
            queries.pool_utilization_by_hour(view.start, view.end)),
        "queue-wait-over-time": figures.queue_wait_over_time(queries.queue_wait_by_hour(view.start, view.end)),
        "desired-replicas-over-time": figures.desired_replicas_over_time(desired_over_time(view.start, view.end)),
        **{f"gpu-{r.statement.pool}": figures.gpu_charges(r) for r in reports},
    }
    return render(request, "dashboards/gpu.html", {
        **context, "reports": [{"report": r, "chart": f"gpu-{r.statement.pool}"} for r in reports],
        "replicas": replica_states(), "autoscaling": pool_overview(), "charts": _charts(charts)})


@login_required
def staff_capacity(request):
    """The latest capacity plan (manage.py plan_capacity): replicas over time per scenario against demand,
    cost and SLO attainment by scenario. Staff only."""
    if not request.user.is_staff:
        raise PermissionDenied("Staff only.")
    plan = latest_plan()
    charts = capacity_figures.plan_figures(plan.result) if plan else {}

    def pct(x):  # attainment near 100 % needs two decimals to tell scenarios apart
        return "—" if x is None else f"{x * 100:.2f}%"

    rows = [{**s, "idle": pct(s["idle_share"]), "interactive": pct(s["interactive_attainment"]),
             "batch": pct(s["batch_attainment"])} for s in plan.result["scenarios"]] if plan else []
    return render(request, "dashboards/capacity.html", {"plan": plan, "result": plan.result if plan else None,
                                                        "rows": rows, "charts": _charts(charts)})
