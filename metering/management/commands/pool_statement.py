"""Print a GPU pool's statement for a period: total cost, used, idle, per-org charges, platform overhead."""

from __future__ import annotations

import csv
import io
import json
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware

from metering.models import PoolRate
from metering.pool_statements import PoolStatementReport, month_period, pool_statement_report


def _moment(value: str, flag: str):
    parsed = parse_datetime(value) if "T" in value or " " in value else parse_datetime(f"{value}T00:00:00")
    if parsed is None:
        raise CommandError(f"{flag} must be an ISO 8601 date or time, not {value!r}")
    # A bare date or time without an offset is UTC, like --period.
    return make_aware(parsed, timezone=dt_timezone.utc) if is_naive(parsed) else parsed


def _money(amount: Decimal) -> str:
    # Always nine places (the ledger's quantum), so columns line up and 0 reads as 0.000000000.
    return f"{amount:.9f}"


class Command(BaseCommand):
    help = (
        "Print a GPU pool's cost over a period and who pays it: each org's own GPU time plus, for orgs in "
        "gpu_shared mode, a share of idle time; the rest is platform overhead. Lines add up to the total "
        "exactly. Reads only the database (not ClickHouse), so it runs while the server does."
    )

    def add_arguments(self, parser):
        parser.add_argument("--pool", required=True, help="Pool name, as on its pool rates (e.g. interactive).")
        parser.add_argument("--period", help="A UTC month, YYYY-MM.")
        parser.add_argument("--start", help="Inclusive, ISO 8601 (UTC unless an offset is given); with --end.")
        parser.add_argument("--end", help="Exclusive, ISO 8601; with --start.")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")

    def handle(self, *args, pool: str, period: str | None, start: str | None, end: str | None, format: str,
               **options):
        if period and (start or end):
            raise CommandError("give either --period or --start and --end, not both")
        if period:
            try:
                begin, finish = month_period(period)
            except ValueError as exc:
                raise CommandError(str(exc))
        elif start and end:
            begin, finish = _moment(start, "--start"), _moment(end, "--end")
        else:
            raise CommandError("give --period YYYY-MM, or --start and --end")
        if begin >= finish:
            raise CommandError("the period must start before it ends")
        if not PoolRate.objects.filter(pool=pool).exists():
            raise CommandError(f"no pool rate is set for pool {pool!r} (admin: Metering → Pool rates)")
        report = pool_statement_report(pool, begin, finish)
        {"table": self.write_table, "csv": self.write_csv, "json": self.write_json}[format](report)

    def write_json(self, report: PoolStatementReport) -> None:
        from metering.api import PoolStatementBody

        self.stdout.write(json.dumps(PoolStatementBody(report).data, indent=2))

    def write_csv(self, report: PoolStatementReport) -> None:
        s = report.statement
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["line", "org", "mode", "used", "idle_share", "charge"])
        for line in report.lines:
            writer.writerow(["org", line.org_slug, line.mode, _money(line.used), _money(line.idle_share),
                             _money(line.charge)])
        writer.writerow(["platform_overhead", "", "", "", "", _money(s.platform_overhead)])
        # The total row holds each column's sum; its charge is the pool's cost (org charges + overhead).
        idle_shared = sum((line.idle_share for line in report.lines), Decimal(0))
        writer.writerow(["total", "", "", _money(s.used), _money(idle_shared), _money(s.total)])
        self.stdout.write(buffer.getvalue(), ending="")

    def write_table(self, report: PoolStatementReport) -> None:
        s = report.statement
        self.stdout.write(f"Pool statement: {s.pool}, {s.start:%Y-%m-%d %H:%M} to {s.end:%Y-%m-%d %H:%M} UTC")
        summary = [("pool cost (total)", _money(s.total)), ("used (GPU time)", _money(s.used)),
                   ("idle", _money(s.idle))]
        width = max(len(label) for label, _ in summary)
        money = max(len(value) for _, value in summary)
        for label, value in summary:
            self.stdout.write(f"  {label.ljust(width)}  {value.rjust(money)}")
        if report.utilization is not None:
            self.stdout.write(f"  engine-seconds {report.engine_seconds:,.3f} of {report.replica_seconds:,.0f} "
                              f"replica-seconds paid for: {report.utilization:.2%} utilization")
        self.stdout.write("")
        rows = [("org", "mode", "used", "idle share", "charge")]
        rows += [(line.org_slug, line.mode, _money(line.used), _money(line.idle_share), _money(line.charge))
                 for line in report.lines]
        rows.append(("platform overhead", "", "", "", _money(s.platform_overhead)))
        rows.append(("total", "", "", "", _money(s.total)))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for i, row in enumerate(rows):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
            if i == len(rows) - 1:
                self.stdout.write("-" * (sum(widths) + 2 * 4))
            self.stdout.write("  ".join(cells).rstrip())
        if not report.lines:
            self.stdout.write("(no org used this pool in the period: its whole cost is platform overhead)")
