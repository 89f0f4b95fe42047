"""manage.py plan_capacity: replays a trace through static, autoscaled and separated pools."""

import json
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from capacity import services
from capacity.curves import CurveError, load_curve
from capacity.planning import PlanInputs, run_plan
from capacity.synthetic import diurnal_trace
from capacity.traces import TraceError, read_trace


def _percent(x):
    return "—" if x is None else f"{x * 100:.2f}%"


class Command(BaseCommand):
    help = ("Capacity plan: replays a demand trace (--trace FILE, from export_trace, or --synthetic diurnal) "
            "through a model of the pools built from a measured replica curve, for static, autoscaled and "
            "workload-separated pools; prints GPU-hours, cost, idle share and SLO attainment, and stores the "
            "plan for the staff page (/dashboards/staff/capacity/).")

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--trace", help="a trace file (JSON Lines or CSV; capacity/traces.py)")
        source.add_argument("--synthetic", choices=["diurnal"], help="generate a seeded synthetic trace")
        parser.add_argument("--days", type=int, default=2, help="synthetic: days (default 2)")
        parser.add_argument("--seed", type=int, default=0, help="synthetic: seed (default 0)")
        parser.add_argument("--peak-rps", type=float, default=40.0, help="synthetic: interactive peak requests/s")
        parser.add_argument("--batch-per-day", type=int, default=150_000, help="synthetic: batch requests a day")
        parser.add_argument("--curve", help="replica curve JSON (default TOLLGATE_CAPACITY_CURVE)")
        parser.add_argument("--ttft-slo", type=float, default=1.0, help="interactive TTFT SLO, seconds (default 1)")
        parser.add_argument("--step", type=float, default=30.0, help="simulation step, seconds (default 30)")
        parser.add_argument("--warmup", type=float, default=180.0, help="replica warm-up, seconds (default 180)")
        parser.add_argument("--usd-per-replica-hour", help="price of a replica-hour (default: the pool rate, "
                                                           "else TOLLGATE_CAPACITY_REPLICA_HOUR_USD)")
        parser.add_argument("--json", dest="json_out", help="also write the whole result as JSON here")
        parser.add_argument("--png-dir", help="also write the charts as PNG files into this folder")
        parser.add_argument("--no-save", action="store_true", help="do not store the plan for the staff page")

    def handle(self, *args, **o):
        for name in ("days", "step", "warmup", "ttft_slo", "peak_rps"):
            if o[name] is not None and o[name] <= 0:
                raise CommandError(f"--{name.replace('_', '-')} must be above 0")
        if o["batch_per_day"] < 0:
            raise CommandError("--batch-per-day must be 0 or more")
        try:
            curve = load_curve(o["curve"] or settings.TOLLGATE_CAPACITY_CURVE)
        except CurveError as e:
            raise CommandError(f"bad curve: {e}") from None
        try:
            if o["usd_per_replica_hour"]:
                price, gpus, price_from = Decimal(o["usd_per_replica_hour"]), 1, "--usd-per-replica-hour"
                if not price.is_finite() or price < 0:
                    raise InvalidOperation
                batch_price = price
            else:
                price, gpus, price_from = services.replica_hour_price("interactive")
                batch_price = services.replica_hour_price("batch")[0]
        except InvalidOperation:
            raise CommandError("--usd-per-replica-hour must be a decimal number >= 0") from None
        except ValueError as e:
            raise CommandError(str(e)) from None
        started = time.monotonic()
        if o["trace"]:
            try:
                trace = read_trace(o["trace"])
            except TraceError as e:
                raise CommandError(f"bad trace: {e}") from None
            label = str(o["trace"])
        else:
            trace = diurnal_trace(days=o["days"], seed=o["seed"], peak_rps=o["peak_rps"],
                                  batch_requests_per_day=o["batch_per_day"])
            label = f"synthetic diurnal, {o['days']} day(s), seed {o['seed']}"
        self.stderr.write(f"{len(trace)} requests ({label}); curve {curve.source}")
        inputs = PlanInputs(ttft_slo_s=o["ttft_slo"], step_s=o["step"], warmup_s=o["warmup"],
                            usd_per_replica_hour=price, batch_usd_per_replica_hour=batch_price, gpus_per_replica=gpus)

        def progress(scenario, t, total):
            self.stderr.write(f"  {scenario}: {t / 3600:.0f} h of {total / 3600:.0f} h simulated "
                              f"({time.monotonic() - started:.0f} s)")

        result = run_plan(trace, curve, inputs, progress=progress, trace_label=label)
        result["inputs"]["price_from"] = price_from
        self._table(result)
        if o["json_out"]:
            Path(o["json_out"]).write_text(json.dumps(result, indent=1) + "\n")
            self.stderr.write(f"result written to {o['json_out']}")
        if o["png_dir"]:
            from capacity.figures import plan_figures
            from capacity.png import PngExportError, write_pngs
            try:
                for path in write_pngs(plan_figures(result), o["png_dir"]):
                    self.stderr.write(f"chart written to {path}")
            except PngExportError as e:
                raise CommandError(str(e)) from None
        if not o["no_save"]:
            plan = services.save_plan(result, label)
            self.stderr.write(f"plan {plan.pk} stored (staff page: /dashboards/staff/capacity/)")

    def _table(self, result):
        inputs = result["inputs"]
        self.stdout.write(f"TTFT SLO {inputs['ttft_slo_s']:g} s, batch window {inputs['completion_window_s'] / 3600:g} h, "
                          f"step {inputs['step_s']:g} s, warm-up {inputs['warmup_s']:g} s, "
                          f"${inputs['usd_per_replica_hour']}/replica-hour ({inputs.get('price_from', '')})")
        self.stdout.write(f"{'scenario':<12}{'GPU-hours':>11}{'cost USD':>11}{'idle':>8}{'interactive':>13}"
                          f"{'batch':>9}{'TTFT p95 s':>12}  pools (most replicas ready)")
        for s in result["scenarios"]:
            pools = ", ".join(f"{p['name']} {p['max_ready']}" for p in s["pools"])
            ttft = "—" if s["ttft_p95_s"] is None else f"{s['ttft_p95_s']:.3f}"
            self.stdout.write(f"{s['name']:<12}{s['gpu_hours']:>11}{s['cost_usd']:>11}{_percent(s['idle_share']):>8}"
                              f"{_percent(s['interactive_attainment']):>13}{_percent(s['batch_attainment']):>9}"
                              f"{ttft:>12}  {pools}")
        sv = result["savings"]
        a, sep = sv["autoscaled_vs_static"], sv["separated_vs_autoscaled"]
        self.stdout.write(f"autoscaled saves ${a['usd']} ({_percent(a['share'])}) against static; "
                          f"SLO attainment equal within {inputs['attainment_tolerance'] * 100:g} points: "
                          f"interactive {a['interactive_attainment_equal']}, batch {a['batch_attainment_equal']}")
        self.stdout.write(f"separating batch from interactive saves ${sep['usd']} ({_percent(sep['share'])}) against "
                          f"one autoscaled pool; interactive attainment {sep['interactive_attainment_gain'] * 100:+.2f} "
                          f"points")
