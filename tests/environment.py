"""Loaded as a pytest plugin (`-p tests.environment`) so it runs before Django reads settings.

Each test session gets a private chDB folder and var dir; the usage outbox is
shipped by the tests themselves (the same function the beat task and the
in-process thread call), so results do not depend on a timer; so are the
autoscaling samples.
"""

import os
import tempfile

os.environ.setdefault("CLICKHOUSE_DSN", f"chdb:///{tempfile.mkdtemp(prefix='tollgate-test-ch-')}")
os.environ.setdefault("TOLLGATE_INPROCESS_SHIPPER", "false")
# No sampler thread: the autoscaling tests sample and publish themselves.
os.environ.setdefault("TOLLGATE_AUTOSCALE_SAMPLE_S", "0")
os.environ.setdefault("TOLLGATE_VAR_DIR", tempfile.mkdtemp(prefix="tollgate-test-var-"))
