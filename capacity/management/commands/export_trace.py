"""manage.py export_trace [--since T] [--until T] --out FILE: the usage ledger's demand as a trace."""

from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from capacity import services
from capacity.traces import write_trace


def _when(value: str, name: str) -> datetime:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--{name} is not an ISO 8601 date or time: {value!r}") from None
    # A bare date or naive time is read as UTC: the ledger's times are UTC.
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


class Command(BaseCommand):
    help = ("Writes the usage ledger's engine attempts in [--since, --until) as a capacity trace (JSON Lines, or "
            "CSV when --out ends in .csv). Default range: the last 7 whole UTC days.")

    def add_arguments(self, parser):
        parser.add_argument("--since", help="ISO 8601 (UTC when no zone is given)")
        parser.add_argument("--until", help="ISO 8601, exclusive (UTC when no zone is given)")
        parser.add_argument("--out", required=True, help="the trace file to write")

    def handle(self, *args, since=None, until=None, out=None, **options):
        start, end = services.default_window()
        start = _when(since, "since") if since else start
        end = _when(until, "until") if until else end
        if end <= start:
            raise CommandError("--until must be after --since")
        try:
            n = write_trace(services.trace_from_ledger(start, end), out)
        except OSError as e:
            raise CommandError(f"cannot write {out}: {e.strerror or e}") from None
        self.stdout.write(f"{n} requests from {start.isoformat()} to {end.isoformat()} written to {out}")
