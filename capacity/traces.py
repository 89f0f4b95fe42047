"""Demand traces: what arrived when, of which kind, how many tokens in and out.

One request a line, as JSON Lines (``.jsonl``) or CSV with a header (``.csv``), the same fields either way:

=============== ==========================================================================================
``at``          arrival, ISO 8601 with a zone (``2026-03-02T09:15:04.120Z``); times are kept in UTC
``kind``        ``interactive`` | ``batch`` | ``embedding``
``model``       the model the request asked for (``tollgate-small``)
``prompt_tokens``  input tokens (an integer >= 0)
``output_tokens``  tokens generated (an integer >= 0)
``deadline``    batch only, optional: when it must be done (ISO 8601); default ``at`` + 24 h, the
                completion window of OpenAI's Batch API (the only one it offers, and Tollgate's)
=============== ==========================================================================================

Lines need not be in time order (they are sorted on reading). Anything malformed is a
:class:`TraceError` naming the line, so a bad export is fixed at its source, not guessed at.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

KINDS = ("interactive", "batch", "embedding")
FIELDS = ("at", "kind", "model", "prompt_tokens", "output_tokens", "deadline")
DEFAULT_COMPLETION_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    at: datetime  # aware, UTC
    kind: str
    model: str
    prompt_tokens: int
    output_tokens: int
    deadline: datetime | None = None  # batch: when it must be complete


class TraceError(ValueError):
    """A trace that cannot be read; ``line`` is 1-based (the CSV header is line 1), 0 for the file."""

    def __init__(self, message: str, line: int = 0, path: str = ""):
        self.line, self.path = line, path
        where = f"{path}, line {line}" if line else path
        super().__init__(f"{where}: {message}" if where else message)


def _time(value, name: str) -> datetime:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} must be an ISO 8601 time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name!r} is not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        # A naive time is ambiguous by hours; guessing would shift the whole day curve.
        raise ValueError(f"{name!r} has no time zone: {value!r} (add Z or +00:00)")
    return parsed.astimezone(timezone.utc)


def _count(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name!r} must be a whole number >= 0, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            raise ValueError(f"{name!r} must be a whole number >= 0, got {value!r}")
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name!r} must be a whole number >= 0, got {value!r}")
    return value


def parse_request(fields: dict) -> TraceRequest:
    """One request from a JSON object or CSV row; ValueError says what is wrong with it."""
    missing = [f for f in FIELDS[:5] if fields.get(f) in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(repr(m) for m in missing)}")
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(repr(u) for u in unknown)}")
    kind = fields["kind"]
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    model = fields["model"]
    if not isinstance(model, str):
        raise ValueError(f"'model' must be a string, got {model!r}")
    at = _time(fields["at"], "at")
    deadline = None
    if fields.get("deadline") not in (None, ""):
        if kind != "batch":
            raise ValueError("'deadline' is for batch requests only")
        deadline = _time(fields["deadline"], "deadline")
        if deadline < at:
            raise ValueError("'deadline' is before 'at'")
    elif kind == "batch":
        deadline = at + DEFAULT_COMPLETION_WINDOW
    return TraceRequest(at=at, kind=kind, model=model, prompt_tokens=_count(fields["prompt_tokens"], "prompt_tokens"),
                        output_tokens=_count(fields["output_tokens"], "output_tokens"), deadline=deadline)


def _is_csv(path: Path) -> bool:
    if path.suffix.lower() == ".csv":
        return True
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return False
    with path.open("rb") as f:  # no telling suffix: JSON Lines start with "{"
        return not f.read(64).lstrip().startswith(b"{")


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        if _is_csv(path):
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                return
            for row in reader:
                if None in row:
                    raise TraceError("more values than the header names", reader.line_num, str(path))
                yield reader.line_num, row
            return
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise TraceError(f"not JSON ({e.msg})", number, str(path)) from None
            if not isinstance(obj, dict):
                raise TraceError("each line must be a JSON object", number, str(path))
            yield number, obj


def read_trace(path: str | Path) -> list[TraceRequest]:
    """Every request of the file, in arrival order. TraceError for a missing, empty or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise TraceError("no such file", 0, str(path))
    requests = []
    try:
        for number, fields in _rows(path):
            try:
                requests.append(parse_request(fields))
            except ValueError as e:
                raise TraceError(str(e), number, str(path)) from None
    except UnicodeDecodeError:
        raise TraceError("not UTF-8 text", 0, str(path)) from None
    if not requests:
        raise TraceError("no requests in the trace", 0, str(path))
    requests.sort(key=lambda r: r.at)
    return requests


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_fields(r: TraceRequest) -> dict:
    return {"at": _iso(r.at), "kind": r.kind, "model": r.model, "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens, "deadline": _iso(r.deadline) if r.deadline else None}


def write_trace(requests: Iterable[TraceRequest], path: str | Path) -> int:
    """Writes JSON Lines, or CSV when the name ends in .csv; returns how many requests."""
    path = Path(path)
    n = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for r in requests:
                row = as_fields(r)
                writer.writerow({**row, "deadline": row["deadline"] or ""})
                n += 1
        else:
            for r in requests:
                f.write(json.dumps(as_fields(r), separators=(",", ":")) + "\n")
                n += 1
    return n
