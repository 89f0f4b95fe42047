"""Plotly figures for the chargeback dashboard. Input is plain rows from metering.queries."""

from __future__ import annotations

from datetime import date, timedelta

import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Plotly's config for every chart (dashboards/static/dashboards/charts.js passes it to Plotly.newPlot).
# A chargeback page never offers to send tenant data off-site: no "Share chart" (upload to
# Chart Studio), no "Edit in Chart Studio", no plotly logo linking out. The PNG download stays;
# it is drawn in the browser and never leaves the machine.
CHART_CONFIG = {
    "displaylogo": False,
    "showSendToCloud": False,
    "showEditInChartStudio": False,
    "showLink": False,
    "sendData": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio", "select2d", "lasso2d"],
    "toImageButtonOptions": {"format": "png", "filename": "tollgate-chart"},
}

_LAYOUT = dict(
    margin=dict(l=48, r=16, t=40, b=40),
    height=320,
    paper_bgcolor="rgba(0,0,0,0)",
    plot_bgcolor="rgba(0,0,0,0)",
    font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12),
    yaxis=dict(tickprefix="$", tickformat=",.3~r", gridcolor="#e5e7eb", rangemode="tozero"),
)


def spend_over_time(rows: list[tuple[date, object]], first_day: date, last_day: date, tz: str = "UTC") -> go.Figure:
    """Spend per day; days are the org's days (midnight to midnight in `tz`), and the title says so."""
    by_day = {day: float(cost) for day, cost in rows}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    # Days without traffic are drawn as zero, not skipped, so gaps read as gaps.
    fig = go.Figure(go.Bar(x=days, y=[by_day.get(d, 0.0) for d in days], marker_color="#2563eb",
                           hovertemplate="%{x|%b %d}: $%{y:,.3~r}<extra></extra>"))
    fig.update_layout(title=f"Spend per day ({tz})", **_LAYOUT)
    return fig


# Distinct colours for stacked series (features, models), in order of spend.
_SERIES = ["#2563eb", "#7c3aed", "#059669", "#d97706", "#dc2626", "#0891b2", "#65a30d", "#db2777", "#4b5563"]


def spend_over_time_stacked(rows: list[tuple[date, str, object]], first_day: date, last_day: date,
                            tz: str = "UTC", by: str = "feature") -> go.Figure:
    """Spend per day in the org's days, one stacked bar series per feature (or model), largest first."""
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    series: dict[str, dict] = {}
    for day, key, cost in rows:
        series.setdefault(key, {})[day] = series.get(key, {}).get(day, 0.0) + float(cost)
    order = sorted(series, key=lambda k: (-sum(series[k].values()), k))
    fig = go.Figure([
        go.Bar(x=days, y=[series[key].get(d, 0.0) for d in days], name=key,
               marker_color=_SERIES[i % len(_SERIES)],
               hovertemplate=f"{key}<br>" + "%{x|%b %d}: $%{y:,.3~r}<extra></extra>")
        for i, key in enumerate(order)
    ] or [go.Bar(x=days, y=[0.0] * len(days), marker_color=_SERIES[0], showlegend=False)])
    fig.update_layout(title=f"Spend per day ({tz}), by {by}", barmode="stack",
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **_LAYOUT)
    return fig


def spend_by_key(rows: list[dict], title: str, colour: str) -> go.Figure:
    keys = [r["key"] for r in rows][::-1]
    costs = [float(r["cost"]) for r in rows][::-1]
    requests = [r["requests"] for r in rows][::-1]
    fig = go.Figure(go.Bar(x=costs, y=keys, orientation="h", marker_color=colour, customdata=requests,
                           hovertemplate="%{y}: $%{x:,.3~r} over %{customdata} requests<extra></extra>"))
    layout = dict(_LAYOUT, xaxis=dict(tickprefix="$", tickformat=",.3~r", gridcolor="#e5e7eb", rangemode="tozero"), yaxis=dict())
    fig.update_layout(title=title, **layout)
    return fig


_MONEY_AXIS = dict(tickprefix="$", tickformat=",.3~r", gridcolor="#e5e7eb", rangemode="tozero")
_BILLED = "#2563eb"
_NOT_BILLED = "#9ca3af"


def cost_components(components) -> go.Figure:
    """Billed components (base, escalation) beside what is only recorded (retry) or counterfactual (savings).

    Not-billed bars are grey and hatched and say so in the legend and hover, so
    nobody adds them to the bill by eye.
    """
    # Two-line labels: a half-width panel would otherwise tilt them.
    billed = [("Base", components.base), ("Escalation", components.escalation)]
    if components.unsplit:
        billed.append(("Not split<br>(older rows)", components.unsplit))
    not_billed = [("Retry", components.retry), ("Cache<br>savings", components.savings_cache),
                  ("Token<br>savings", components.savings_tokens)]
    fig = go.Figure([
        go.Bar(x=[k for k, _ in billed], y=[float(v) for _, v in billed], name="Billed", marker_color=_BILLED,
               hovertemplate="%{x}: $%{y:,.3~r} (billed)<extra></extra>"),
        go.Bar(x=[k for k, _ in not_billed], y=[float(v) for _, v in not_billed],
               name="Not billed (recorded or counterfactual)", marker_color=_NOT_BILLED,
               marker_pattern_shape="/", hovertemplate="%{x}: $%{y:,.3~r} (not billed)<extra></extra>"),
    ])
    fig.update_layout(title="Cost components", barmode="group", bargap=0.3,
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **_LAYOUT)
    fig.update_xaxes(tickangle=0)
    return fig


def _say_when_empty(fig: go.Figure, empty: bool, message: str) -> go.Figure:
    """An empty chart says why instead of showing bare axes."""
    if empty:
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                           font=dict(color="#6b7280"))
    return fig


def gpu_by_pool(pools: list) -> go.Figure:
    """Engine-seconds and GPU cost per pool, side by side (two axes would hide one of them)."""
    names = [p.pool or "(no pool)" for p in pools][::-1]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.08,
                        subplot_titles=("Engine-seconds", "GPU cost"))
    fig.add_trace(go.Bar(x=[p.engine_seconds for p in pools][::-1], y=names, orientation="h",
                         marker_color="#0891b2", name="Engine-seconds",
                         hovertemplate="%{y}: %{x:,.4~r} s<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=[float(p.cost_gpu) for p in pools][::-1], y=names, orientation="h",
                         marker_color="#d97706", name="GPU cost",
                         hovertemplate="%{y}: $%{x:,.3~r}<extra></extra>"), row=1, col=2)
    layout = {k: v for k, v in _LAYOUT.items() if k != "yaxis"}
    fig.update_layout(title="GPU time per pool", showlegend=False, **layout)
    fig.update_xaxes(rangemode="tozero", gridcolor="#e5e7eb", row=1, col=1)
    fig.update_xaxes(**_MONEY_AXIS, row=1, col=2)
    return _say_when_empty(fig, not pools, "No GPU time in this period")


def pool_utilization(pools: list) -> go.Figure:
    """Busy share of each pool's paid capacity (engine-seconds ÷ replica-seconds); pools without a rate are left out."""
    rated = [p for p in pools if p.utilization is not None][::-1]
    fig = go.Figure(go.Bar(
        x=[p.utilization for p in rated], y=[p.pool for p in rated], orientation="h", marker_color="#16a34a",
        customdata=[[p.engine_seconds, float(p.replica_seconds)] for p in rated],
        hovertemplate="%{y}: %{x:.1%} (%{customdata[0]:,.4~r} of %{customdata[1]:,.0f} replica-seconds)"
                      "<extra></extra>"))
    layout = dict(_LAYOUT, xaxis=dict(tickformat=".0%", gridcolor="#e5e7eb", rangemode="tozero"), yaxis=dict())
    fig.update_layout(title="GPU utilization per pool", **layout)
    return _say_when_empty(fig, not rated, "No pool with a rate was used in this period")


def retries_and_escalations_over_time(rows: list, first_day: date, last_day: date, tz: str) -> go.Figure:
    """Retry cost (not billed) and escalation cost (billed) per day, side by side."""
    by_day = {r.key: r for r in rows}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    fig = go.Figure([
        go.Bar(x=days, y=[float(by_day[d].escalation) if d in by_day else 0.0 for d in days],
               name="Escalation (billed)", marker_color=_BILLED,
               hovertemplate="%{x|%b %d}: $%{y:,.3~r} escalation (billed)<extra></extra>"),
        go.Bar(x=days, y=[float(by_day[d].retry) if d in by_day else 0.0 for d in days],
               name="Retry (not billed)", marker_color=_NOT_BILLED, marker_pattern_shape="/",
               hovertemplate="%{x|%b %d}: $%{y:,.3~r} retry (not billed)<extra></extra>"),
    ])
    fig.update_layout(title=f"Retry and escalation cost per day ({tz})", barmode="group",
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **_LAYOUT)
    return _say_when_empty(fig, not any(r.retry or r.escalation for r in rows),
                           "No retries or escalations in this period")


def savings_over_time(rows: list, first_day: date, last_day: date, tz: str) -> go.Figure:
    """Cache and token-optimization savings per day (counterfactual: what was not spent), stacked."""
    by_day = {r.key: r for r in rows}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    fig = go.Figure([
        go.Bar(x=days, y=[float(by_day[d].savings_cache) if d in by_day else 0.0 for d in days],
               name="Cache", marker_color="#16a34a",
               hovertemplate="%{x|%b %d}: $%{y:,.3~r} saved by the cache<extra></extra>"),
        go.Bar(x=days, y=[float(by_day[d].savings_tokens) if d in by_day else 0.0 for d in days],
               name="Token optimization", marker_color="#0891b2",
               hovertemplate="%{x|%b %d}: $%{y:,.3~r} saved by token optimization<extra></extra>"),
    ])
    fig.update_layout(title=f"Saved per day, not billed ({tz})", barmode="stack",
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **_LAYOUT)
    return _say_when_empty(fig, not any(r.saved for r in rows), "Nothing saved in this period")


def cache_hit_rate_over_time(rows: list, first_day: date, last_day: date, tz: str) -> go.Figure:
    """Cache hits per answered attempt, per day (days without traffic are gaps, not zeros)."""
    by_day = {r.key: r for r in rows}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    fig = go.Figure(go.Scatter(
        x=days, y=[by_day[d].cache_hit_rate if d in by_day else None for d in days], mode="lines+markers",
        name="Exact cache", line_color="#16a34a", connectgaps=False,
        hovertemplate="%{x|%b %d}: %{y:.1%} of answered attempts<extra></extra>"))
    layout = dict(_LAYOUT, yaxis=dict(tickformat=".0%", gridcolor="#e5e7eb", rangemode="tozero"))
    fig.update_layout(title=f"Cache-hit rate per day ({tz})", **layout)
    return _say_when_empty(fig, not rows, "No answered attempts in this period")


def budget_burn(title: str, rows: list[tuple[date, object]], first_day: date, today: date, last_day: date,
                amount, forecast, tz: str) -> go.Figure:
    """Cumulative spend this period against the budget's amount, and the forecast to the period's end."""
    by_day = {day: float(cost) for day, cost in rows}
    days = [first_day + timedelta(days=i) for i in range((today - first_day).days + 1)]
    running, cumulative = 0.0, []
    for d in days:
        running += by_day.get(d, 0.0)
        cumulative.append(running)
    fig = go.Figure([
        go.Scatter(x=days, y=cumulative, mode="lines+markers", name="Spent", line_color=_BILLED,
                   hovertemplate="%{x|%b %d}: $%{y:,.3~r} spent<extra></extra>"),
        go.Scatter(x=[first_day, last_day], y=[float(amount)] * 2, mode="lines", name="Budget",
                   line=dict(color="#dc2626", dash="dash"), hovertemplate="budget $%{y:,.2f}<extra></extra>"),
    ])
    if forecast is not None and days:
        fig.add_trace(go.Scatter(x=[today, last_day], y=[cumulative[-1], float(forecast)], mode="lines",
                                 name="Forecast", line=dict(color="#d97706", dash="dot"),
                                 hovertemplate="%{x|%b %d}: $%{y:,.3~r} forecast<extra></extra>"))
    fig.update_layout(title=f"{title} ({tz})",
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **_LAYOUT)
    return fig


def gpu_charges(report) -> go.Figure:
    """One pool's cost over the period: each org's own GPU time and idle share, and the platform's overhead."""
    names = [line.org_slug for line in report.lines] + ["platform overhead"]
    used = [float(line.used) for line in report.lines] + [0.0]
    idle = [float(line.idle_share) for line in report.lines] + [float(report.statement.platform_overhead)]
    fig = go.Figure([
        go.Bar(x=names, y=used, name="Own GPU time", marker_color="#0891b2",
               hovertemplate="%{x}: $%{y:,.3~r} own GPU time<extra></extra>"),
        go.Bar(x=names, y=idle, name="Idle time", marker_color=_NOT_BILLED, marker_pattern_shape="/",
               hovertemplate="%{x}: $%{y:,.3~r} idle time<extra></extra>"),
    ])
    fig.update_layout(title=f"Pool {report.statement.pool}: who pays its cost", barmode="stack",
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **_LAYOUT)
    return fig


def pool_utilization_over_time(by_pool: dict) -> go.Figure:
    """Each rated pool's utilization per UTC hour (engine-seconds ÷ replica-seconds paid for), one line each.

    Hours no rate covered are gaps (nothing was paid for, so there is no share to show)."""
    fig = go.Figure([
        go.Scatter(x=[h.hour for h in hours], y=[h.utilization for h in hours], mode="lines", name=pool,
                   line=dict(color=_SERIES[i % len(_SERIES)], width=1.5), connectgaps=False,
                   customdata=[[h.engine_seconds, float(h.replica_seconds or 0)] for h in hours],
                   hovertemplate=f"{pool}<br>" + "%{x|%b %d %H:00}: %{y:.1%} "
                                 "(%{customdata[0]:,.4~r} of %{customdata[1]:,.0f} replica-seconds)<extra></extra>")
        for i, (pool, hours) in enumerate(by_pool.items())
    ])
    layout = dict(_LAYOUT, yaxis=dict(tickformat=".3~%", gridcolor="#e5e7eb", rangemode="tozero"))
    fig.update_layout(title="GPU utilization per hour (UTC)",
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **layout)
    return _say_when_empty(fig, not by_pool, "No pool has a GPU rate")


def queue_wait_over_time(by_pool: dict) -> go.Figure:
    """Queue wait per UTC hour and pool: p50 as a line, p95 dotted in the same colour."""
    traces = []
    for i, (pool, hours) in enumerate(by_pool.items()):
        colour = _SERIES[i % len(_SERIES)]
        x, attempts = [h.hour for h in hours], [h.attempts for h in hours]
        for label, values, dash in (("p50", [h.p50_ms for h in hours], "solid"),
                                    ("p95", [h.p95_ms for h in hours], "dot")):
            traces.append(go.Scatter(
                x=x, y=values, mode="lines+markers", name=f"{pool} {label}", customdata=attempts,
                line=dict(color=colour, dash=dash, width=1.5), marker=dict(size=3),
                hovertemplate=f"{pool} {label}<br>" + "%{x|%b %d %H:00}: %{y:,.1f} ms "
                              "over %{customdata} attempts<extra></extra>"))
    fig = go.Figure(traces)
    layout = dict(_LAYOUT, yaxis=dict(ticksuffix=" ms", gridcolor="#e5e7eb", rangemode="tozero"))
    # Legend below: four entries per pool do not fit beside the title on a half-width panel.
    fig.update_layout(title="Queue wait per hour (UTC), p50 and p95",
                      legend=dict(orientation="h", x=0, y=-0.25, yanchor="top"), **dict(layout, height=360))
    return _say_when_empty(fig, not by_pool, "No attempt queued for a pool in this period")


def desired_replicas_over_time(by_pool: dict) -> go.Figure:
    """Each pool's desired replica count (the autoscaler's decisions) as a step line over the period."""
    traces = [go.Scatter(x=[t for t, _ in points], y=[n for _, n in points], mode="lines", line_shape="hv",
                         name=pool, line=dict(color=_SERIES[i % len(_SERIES)], width=2),
                         hovertemplate=f"{pool}<br>" + "%{x|%b %d %H:%M}: %{y} replicas<extra></extra>")
              for i, (pool, points) in enumerate(sorted(by_pool.items()))]
    fig = go.Figure(traces)
    fig.update_layout(title="Desired replicas (autoscaler)",
                      **dict(_LAYOUT, yaxis=dict(gridcolor="#e5e7eb", rangemode="tozero", dtick=1)))
    return _say_when_empty(fig, not by_pool, "The autoscaler changed no pool in this period")


def routed_share_by_tier_over_time(routing, first_day: date, last_day: date, tz: str) -> go.Figure:
    """Per day, the share of `model: "auto"` requests each tier answered (stacked to 100 %)."""
    by_day = {r.key: r for r in routing.by_day}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    fig = go.Figure([
        go.Bar(x=days, y=[by_day[d].share(tier) if d in by_day else None for d in days],
               name=f"Tier {tier}" if tier else "No tier", marker_color=_SERIES[i % len(_SERIES)],
               customdata=[by_day[d].by_tier.get(tier, 0) if d in by_day else 0 for d in days],
               hovertemplate=f"Tier {tier}<br>" + "%{x|%b %d}: %{y:.1%} (%{customdata} requests)<extra></extra>")
        for i, tier in enumerate(routing.tiers)
    ])
    layout = dict(_LAYOUT, yaxis=dict(tickformat=".0%", gridcolor="#e5e7eb", range=[0, 1]))
    fig.update_layout(title=f"Routed requests by tier, per day ({tz})", barmode="stack",
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"), **layout)
    return _say_when_empty(fig, not routing.by_day, 'No request asked for model "auto" in this period')


def routed_escalation_cost_over_time(routing, first_day: date, last_day: date, tz: str) -> go.Figure:
    """Per day, what escalating routed requests cost (answers thrown away for a stronger model's; billed)."""
    by_day = {r.key: r for r in routing.by_day}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    fig = go.Figure(go.Bar(
        x=days, y=[float(by_day[d].escalation) if d in by_day else 0.0 for d in days], name="Escalation (billed)",
        marker_color=_BILLED, customdata=[by_day[d].escalations if d in by_day else 0 for d in days],
        hovertemplate="%{x|%b %d}: $%{y:,.3~r} over %{customdata} escalated attempts<extra></extra>"))
    fig.update_layout(title=f"Escalation cost of routed requests, per day ({tz})", **_LAYOUT)
    return _say_when_empty(fig, not routing.total.escalation, "No routed request escalated in this period")
