"""A seeded synthetic demand trace with a day's shape, for planning before there is history.

Interactive requests follow a working-day curve in UTC: a night trough, a morning peak (10:00) and a
slightly lower afternoon one (15:00), drawn as a Poisson process whose rate follows that curve (by
thinning, so the arrivals are random but the shape is exact on average). Batch requests arrive in bulk
once a day at ``batch_hour``, within ``batch_spread_s`` (files of lines submitted together, the way OpenAI's Batch API takes them),
each due ``batch_window`` later. Token counts are log-normal (a long tail of long answers), clipped to
what one request can ask for.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np

from .traces import TraceRequest

# (hour, width in hours, height relative to the peak): the day's two peaks.
_PEAKS = ((10.0, 2.0, 1.0), (15.0, 2.5, 0.85))


def day_shape(hour, trough: float):
    """The interactive rate at `hour` (UTC, 0..24; a number or an array) as a share of the peak: trough..1."""
    hour = np.asarray(hour, dtype=float)
    bump = np.max([h * np.exp(-0.5 * ((hour - at) / width) ** 2) for at, width, h in _PEAKS], axis=0)
    return trough + (1 - trough) * bump


def _tokens(rng: np.random.Generator, median: float, sigma: float, size: int, low: int, high: int) -> np.ndarray:
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, size)), low, high).astype(int)


def diurnal_trace(*, days: int = 1, seed: int = 0, start: datetime | None = None, peak_rps: float = 40.0,
                  trough: float = 0.08, interactive_output_median: int = 200,
                  batch_requests_per_day: int = 150_000, batch_output_median: int = 400, batch_hour: float = 1.0,
                  batch_spread_s: float = 300.0, batch_window: timedelta = timedelta(hours=24),
                  model: str = "tollgate-small") -> list[TraceRequest]:
    """`days` days from `start` (default 2026-01-05 00:00 UTC, a Monday), in arrival order."""
    if days < 1:
        raise ValueError("days must be at least 1")
    if peak_rps <= 0 or not 0 <= trough <= 1 or batch_requests_per_day < 0:
        raise ValueError("need peak_rps > 0, 0 <= trough <= 1 and batch_requests_per_day >= 0")
    start = (start or datetime(2026, 1, 5, tzinfo=timezone.utc)).astimezone(timezone.utc)
    rng = np.random.default_rng(seed)
    horizon = days * 86400.0
    # Thinning (Lewis & Shedler): candidates at the peak rate, each kept with probability shape(t).
    n = rng.poisson(peak_rps * horizon)
    candidates = np.sort(rng.uniform(0, horizon, n))
    hours = (candidates % 86400.0) / 3600.0
    keep = rng.uniform(0, 1, n) < day_shape(hours, trough)
    arrivals = candidates[keep]
    prompts = _tokens(rng, 350, 0.8, len(arrivals), 8, 6000)
    outputs = _tokens(rng, interactive_output_median, 0.7, len(arrivals), 4, 4096)
    requests = [TraceRequest(at=start + timedelta(seconds=float(t)), kind="interactive", model=model,
                             prompt_tokens=int(p), output_tokens=int(o))
                for t, p, o in zip(arrivals, prompts, outputs)]
    for day in range(days):
        t0 = day * 86400.0 + batch_hour * 3600.0
        at = np.sort(rng.uniform(t0, t0 + batch_spread_s, batch_requests_per_day))
        prompts = _tokens(rng, 600, 0.6, batch_requests_per_day, 16, 6000)
        outputs = _tokens(rng, batch_output_median, 0.6, batch_requests_per_day, 8, 4096)
        for t, p, o in zip(at, prompts, outputs):
            arrival = start + timedelta(seconds=float(t))
            requests.append(TraceRequest(at=arrival, kind="batch", model=model, prompt_tokens=int(p),
                                         output_tokens=int(o), deadline=arrival + batch_window))
    requests.sort(key=lambda r: r.at)
    return requests
