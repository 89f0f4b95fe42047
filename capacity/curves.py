"""The replica model: one replica's output tokens/s and time to first token as functions of how many
sequences it runs at once (its batch), read from a curve that an engine benchmark measured.

``bench/cpu_engine.py --curve-out FILE`` writes one for the CPU engine (``bench/data/cpu_engine_curve.json``
is committed). A curve measured on a GPU worker has the same shape: a JSON object with ``points``, each
``{"concurrency": int, "tokens_per_s": float, "ttft_p50_s": float, "ttft_p95_s": float}`` (other keys are
kept as notes), concurrency rising. Between points the model interpolates linearly; a replica never runs
more sequences than the last point (the engine's ``max_num_seqs``), so past it requests queue.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path


class CurveError(ValueError):
    pass


@dataclass(frozen=True)
class CurvePoint:
    concurrency: int
    tokens_per_s: float  # the replica's output tokens/s, all sequences together
    ttft_p50_s: float
    ttft_p95_s: float


@dataclass(frozen=True)
class ReplicaCurve:
    points: tuple[CurvePoint, ...]
    source: str = ""
    notes: tuple[tuple[str, str], ...] = ()

    @property
    def max_concurrency(self) -> int:
        return self.points[-1].concurrency

    @property
    def peak_tokens_per_s(self) -> float:
        return max(p.tokens_per_s for p in self.points)

    def _at(self, concurrency: float, attr: str) -> float:
        xs = [p.concurrency for p in self.points]
        c = min(max(concurrency, xs[0]), xs[-1])
        i = bisect.bisect_left(xs, c)
        if xs[i] == c:
            return getattr(self.points[i], attr)
        lo, hi = self.points[i - 1], self.points[i]
        share = (c - lo.concurrency) / (hi.concurrency - lo.concurrency)
        return getattr(lo, attr) + share * (getattr(hi, attr) - getattr(lo, attr))

    def tokens_per_s(self, concurrency: float) -> float:
        """The replica's throughput running `concurrency` sequences (below the first point: the first point's
        per-sequence speed, times the sequences)."""
        first = self.points[0]
        if concurrency < first.concurrency:
            return first.tokens_per_s * concurrency / first.concurrency
        return self._at(concurrency, "tokens_per_s")

    def ttft_s(self, concurrency: float) -> float:
        """Median time to first token inside a replica running `concurrency` sequences."""
        return self._at(concurrency, "ttft_p50_s")

    def ttft_p95_s(self, concurrency: float) -> float:
        return self._at(concurrency, "ttft_p95_s")

    def as_dict(self) -> dict:
        return {"source": self.source, "notes": dict(self.notes),
                "points": [p.__dict__ for p in self.points]}


def _number(point: dict, key: str, index: int) -> float:
    value = point.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CurveError(f"point {index}: {key!r} must be a number >= 0, got {value!r}")
    return float(value)


def parse_curve(data, source: str = "") -> ReplicaCurve:
    if not isinstance(data, dict) or not isinstance(data.get("points"), list) or not data["points"]:
        raise CurveError(f"{source}: a curve is a JSON object with a non-empty 'points' list")
    points = []
    for i, p in enumerate(data["points"]):
        if not isinstance(p, dict):
            raise CurveError(f"{source}: point {i} is not an object")
        c = p.get("concurrency")
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise CurveError(f"{source}: point {i}: 'concurrency' must be a whole number >= 1, got {c!r}")
        tps = _number(p, "tokens_per_s", i)
        if tps <= 0:
            raise CurveError(f"{source}: point {i}: 'tokens_per_s' must be above 0")
        p50 = _number(p, "ttft_p50_s", i)
        p95 = _number(p, "ttft_p95_s", i) if "ttft_p95_s" in p else p50
        points.append(CurvePoint(c, tps, p50, max(p50, p95)))
    if any(b.concurrency <= a.concurrency for a, b in zip(points, points[1:])):
        raise CurveError(f"{source}: points must be in rising concurrency, each once")
    notes = tuple((k, str(v)) for k, v in data.items() if k != "points")
    return ReplicaCurve(points=tuple(points), source=source, notes=notes)


def load_curve(path: str | Path) -> ReplicaCurve:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CurveError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CurveError(f"{path}: not JSON ({e})") from None
    return parse_curve(data, str(path))
