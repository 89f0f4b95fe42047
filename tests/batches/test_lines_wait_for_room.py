"""Batch work waits rather than fails: a line refused for now (the pool's queue is full) waits its
Retry-After and runs, so a batch larger than the pool's room still completes, each line billed once."""

from __future__ import annotations

import pytest

from metering.models import UsageRecord
from tests.engines.conftest import MINI, deploy  # noqa: F401 (deploy: a fixture)

from .conftest import chat_line, results, run_batch, wait_for_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle_batches")]


def test_lines_refused_by_a_full_pool_queue_wait_and_all_complete(openai_client, deploy, settings):
    deploy(MINI, [""], max_in_flight_per_replica=1, max_queue=0)  # one line at a time; no queue
    settings.TOLLGATE_BATCH_CONCURRENCY = 4
    settings.TOLLGATE_BATCH_LINE_MAX_WAIT_S = 1

    batch = wait_for_end(openai_client, run_batch(openai_client, [chat_line(f"q{i}", max_tokens=24)
                                                                  for i in range(6)]).id)

    assert batch.status == "completed" and batch.request_counts.completed == 6, results(openai_client,
                                                                                        batch.error_file_id)
    rows = UsageRecord.objects.filter(batch_id=batch.id, status="ok")
    assert rows.count() == 6 and len(set(rows.values_list("request_id", flat=True))) == 6
