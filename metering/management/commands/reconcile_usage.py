"""Compare the usage ledger with ClickHouse, per org, for one month (UTC)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from metering import queries


def month_period(value: str) -> tuple[datetime, datetime]:
    try:
        start = datetime.strptime(value, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        raise CommandError(f"--period must look like 2026-11, not {value!r}")
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


class Command(BaseCommand):
    help = (
        "Compare ledger totals with ClickHouse usage_events (FINAL) and the hourly and daily rollups per org for a "
        "UTC month. Exits 1 on any mismatch (with --strict also when rows are still waiting to ship). "
        "Embedded ClickHouse (chdb://) can be open in one process only: stop the server first, or use an "
        "HTTP CLICKHOUSE_DSN."
    )

    def add_arguments(self, parser):
        parser.add_argument("--period", required=True, help="Month, YYYY-MM (UTC).")
        parser.add_argument("--strict", action="store_true", help="Also fail while rows wait in the outbox.")

    def handle(self, *args, period: str, strict: bool, **options):
        start, end = month_period(period)
        try:
            report = queries.reconcile(start, end)
        except Exception as exc:  # noqa: BLE001 - report why ClickHouse could not be read, then fail
            hint = ""
            if settings.CLICKHOUSE_DSN.startswith("chdb:"):
                hint = " (embedded ClickHouse is held by the running server: stop it, or use an HTTP DSN)"
            raise CommandError(f"cannot read ClickHouse{hint}: {exc}")
        header = ("org", "ledger rows", "ledger cost", "pending rows", "clickhouse rows", "clickhouse cost",
                  "hourly rollup cost", "daily rollup cost", "status")
        lines = [header]
        failed = False
        for line in report:
            if not line.matches:
                status, failed = "MISMATCH", True
            elif line.pending_rows:
                status = f"pending ({line.pending_rows} rows to ship)"
                failed = failed or strict
            else:
                status = "ok"
            lines.append((line.org_slug, str(line.ledger_rows), str(line.ledger_cost), str(line.pending_rows),
                          str(line.clickhouse_rows), str(line.clickhouse_cost), str(line.rollup_cost),
                          str(line.daily_rollup_cost), status))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        self.stdout.write(f"Usage reconciliation {period} ({start:%Y-%m-%d} to {end:%Y-%m-%d} UTC)")
        for row in lines:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if not report:
            self.stdout.write("no usage in this period")
        if failed:
            self.stdout.flush()
            sys.exit(1)
