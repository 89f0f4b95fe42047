"""Bounded, reproducible fuzzing with schemathesis for the fuzz tests of /v1 and /api.

Hypothesis drives schemathesis's request strategies directly rather than through its pytest plugin
(which does not run on this pytest): a fixed seed, derandomized generation and a cap on examples per
operation, for valid and for invalid requests each, so a run sends the same requests every time and
costs seconds.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import hypothesis
import hypothesis.errors
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode

SEED = 20261202
# Multiplies every cap on examples, for a deeper hunt by hand (FUZZ_SCALE=10); 1 in the normal suite.
FUZZ_SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def fuzz_config(checks: list[str]) -> SchemathesisConfig:
    """Only ``checks``: the others (positive_data_acceptance, say) assume every valid request succeeds, and
    a valid body naming a model that is not served is rightly a 404."""
    return SchemathesisConfig.from_dict({
        "seed": SEED,
        "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
        "request-timeout": 60,
    })


def operations(schema) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation in the schema."""
    return [(op.method.upper(), op.path) for op in (result.ok() for result in schema.get_all_operations())]


def _run_racing_imports(run: Callable) -> None:
    """Run a derandomized fuzz, once more if it lost hypothesis's race with the live gateway's imports.

    hypothesis reads ``sys.modules`` to describe a strategy while the gateway thread (same process) may
    import a module lazily on its first request of a kind: "dictionary changed size during iteration". The
    rerun is the same seeded run, so it checks exactly the same requests.
    """
    try:
        run()
    except RuntimeError as exc:
        if "dictionary changed size during iteration" not in str(exc):
            raise
        run()


def run_fuzz(schema, operation: tuple[str, str], call: Callable, *, max_examples: int) -> Counter:
    """``call(case)`` (which returns the response) on up to ``max_examples`` valid and as many invalid
    requests for one operation; returns how many answers had each (mode, status)."""
    method, path = operation
    api_operation = schema[path][method]
    statuses = Counter()
    examples = max(1, round(max_examples * FUZZ_SCALE))
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @hypothesis.settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                             suppress_health_check=list(hypothesis.HealthCheck),
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
        @hypothesis.given(case=api_operation.as_strategy(generation_mode=mode))
        @hypothesis.seed(SEED)
        def run(case):
            statuses[mode.value, call(case).status_code] += 1

        try:
            _run_racing_imports(run)
        except hypothesis.errors.Unsatisfiable:
            # An operation that takes no input at all (GET /v1/openapi.json) has no invalid request.
            assert mode is GenerationMode.NEGATIVE
    return statuses
