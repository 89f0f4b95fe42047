"""Plotly figures of a capacity plan (capacity.planning.run_plan's result): the staff page draws them in the
browser and ``plan_capacity --png-dir`` writes them as PNG files (capacity/png.py)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

_COLOURS = {"static": "#6b7280", "autoscaled": "#2563eb", "separated": "#059669"}
_DEMAND = {"interactive": "rgba(217,119,6,0.25)", "batch": "rgba(124,58,237,0.25)", "embedding": "rgba(8,145,178,0.2)"}
_LAYOUT = dict(margin=dict(l=56, r=56, t=48, b=40), height=360, paper_bgcolor="rgba(0,0,0,0)",
               plot_bgcolor="rgba(0,0,0,0)", font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12),
               legend=dict(orientation="h", y=-0.18))


def replicas_over_time(result: dict) -> go.Figure:
    """Replicas paid for in each scenario (all its pools) against the demand's output tokens/s."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    demand = result["demand"]
    for kind in ("interactive", "batch", "embedding"):
        if kind in demand:
            fig.add_trace(go.Scatter(x=demand["t"], y=demand[kind], name=f"{kind} demand (tok/s)", stackgroup="d",
                                     line=dict(width=0), fillcolor=_DEMAND[kind], hoverinfo="x+y+name"),
                          secondary_y=True)
    for name, pools in result["timelines"].items():
        times = next(iter(pools.values()))["t"]
        total = [sum(p["paid"][i] if i < len(p["paid"]) else 0 for p in pools.values()) for i in range(len(times))]
        fig.add_trace(go.Scatter(x=times, y=total, name=f"{name} replicas", mode="lines",
                                 line=dict(color=_COLOURS.get(name), width=2, shape="hv")), secondary_y=False)
        if len(pools) > 1:
            for pool, series in pools.items():
                fig.add_trace(go.Scatter(x=series["t"], y=series["paid"], name=f"{name}: {pool} pool", mode="lines",
                                         line=dict(color=_COLOURS.get(name), width=1, dash="dot", shape="hv")),
                              secondary_y=False)
    fig.update_layout(title="Replicas paid for vs demand (UTC)", **_LAYOUT)
    fig.update_yaxes(title_text="replicas", rangemode="tozero", gridcolor="#e5e7eb", secondary_y=False)
    # A batch file arrives in minutes: its spike would flatten the day's curve, so the demand axis is sized
    # to interactive traffic and the spike runs off the top (hover shows its value).
    interactive = max(demand.get("interactive") or [0])
    clip = dict(range=[0, interactive * 1.6]) if interactive else {}
    fig.update_yaxes(title_text="output tokens/s arriving", showgrid=False, secondary_y=True, **clip)
    return fig


def cost_by_scenario(result: dict) -> go.Figure:
    names = [s["name"] for s in result["scenarios"]]
    costs = [float(s["cost_usd"]) for s in result["scenarios"]]  # drawing only; the table shows the Decimal
    fig = go.Figure(go.Bar(x=names, y=costs, marker_color=[_COLOURS.get(n) for n in names],
                           text=[f"${s['cost_usd']}" for s in result["scenarios"]], textposition="outside",
                           customdata=[s["gpu_hours"] for s in result["scenarios"]],
                           hovertemplate="%{x}: $%{y:,.2f}, %{customdata} GPU-hours<extra></extra>"))
    fig.update_layout(title="Cost of the trace by scenario", **{**_LAYOUT, "legend": None})
    fig.update_yaxes(tickprefix="$", rangemode="tozero", gridcolor="#e5e7eb")
    return fig


def slo_attainment(result: dict) -> go.Figure:
    names = [s["name"] for s in result["scenarios"]]
    fig = go.Figure()
    slo = result["inputs"]["ttft_slo_s"]
    for key, label, colour in (("interactive_attainment", f"interactive: TTFT ≤ {slo:g} s", "#d97706"),
                               ("batch_attainment", "batch: done within its window", "#7c3aed")):
        values = [s[key] for s in result["scenarios"]]
        if any(v is not None for v in values):
            fig.add_trace(go.Bar(x=names, y=[None if v is None else v * 100 for v in values], name=label,
                                 marker_color=colour, text=[None if v is None else f"{v * 100:.2f}%" for v in values],
                                 textposition="outside"))
    fig.update_layout(title="SLO attainment by scenario", barmode="group", **_LAYOUT)
    low = min([s[k] * 100 for s in result["scenarios"] for k in ("interactive_attainment", "batch_attainment")
               if s[k] is not None] or [90])
    fig.update_yaxes(ticksuffix="%", range=[max(0, min(95, low - 2)), 100.5], gridcolor="#e5e7eb")
    return fig


def plan_figures(result: dict) -> dict[str, go.Figure]:
    """Name -> figure, in page order (the names are the PNG files' and the page's chart ids)."""
    return {"capacity-replicas": replicas_over_time(result), "capacity-cost": cost_by_scenario(result),
            "capacity-slo": slo_attainment(result)}
