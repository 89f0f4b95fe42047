"""Plotly figures for the chargeback dashboard. Input is plain rows from metering.queries."""

from __future__ import annotations

from datetime import date, timedelta

import plotly.graph_objects as go

_LAYOUT = dict(
    margin=dict(l=48, r=16, t=40, b=40),
    height=320,
    paper_bgcolor="rgba(0,0,0,0)",
    plot_bgcolor="rgba(0,0,0,0)",
    font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12),
    yaxis=dict(tickprefix="$", tickformat=",.3~r", gridcolor="#e5e7eb", rangemode="tozero"),
)


def spend_over_time(rows: list[tuple[date, object]], first_day: date, last_day: date) -> go.Figure:
    by_day = {day: float(cost) for day, cost in rows}
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    # Days without traffic are drawn as zero, not skipped, so gaps read as gaps.
    fig = go.Figure(go.Bar(x=days, y=[by_day.get(d, 0.0) for d in days], marker_color="#2563eb",
                           hovertemplate="%{x|%b %d}: $%{y:,.3~r}<extra></extra>"))
    fig.update_layout(title="Spend per day", **_LAYOUT)
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
