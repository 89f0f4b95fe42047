"""A batch survives a restart without redoing finished lines or billing any twice; cancel stops new lines and
bills what ran. The task is the real Celery task, run as a worker would run it (here, in this process)."""

from __future__ import annotations

import pytest

from batches import services
from batches.models import Batch, BatchLine
from batches.tasks import run_batch_task
from metering.models import UsageRecord

from .conftest import chat_line, results, run_batch, wait_for_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle_batches")]


def billed_rows(batch_id: str) -> list:
    return sorted(UsageRecord.objects.filter(batch_id=batch_id, status="ok").values_list("event_id", flat=True))


def test_running_the_task_again_on_a_finished_batch_bills_no_line_twice(openai_client):
    batch = wait_for_end(openai_client, run_batch(openai_client, [chat_line(f"r{i}") for i in range(4)]).id)
    billed = billed_rows(batch.id)
    assert len(billed) == 4
    # A redelivered task (the worker was restarted before it acknowledged): the same batch runs again.
    Batch.objects.filter(pk=batch.id).update(status=Batch.Status.IN_PROGRESS, completed_at=None)

    assert run_batch_task.apply(args=[batch.id]).get() == "completed"

    assert billed_rows(batch.id) == billed
    again = openai_client.batches.retrieve(batch.id)
    assert (again.request_counts.completed, again.request_counts.failed) == (4, 0)
    assert set(results(openai_client, again.output_file_id)) == {f"r{i}" for i in range(4)}


def test_a_batch_whose_process_stopped_before_it_ran_is_resumed_and_each_line_billed_once(openai_client,
                                                                                          monkeypatch):
    monkeypatch.setattr(services, "start_batch", lambda batch_id: None)  # the process stopped right after create
    created = run_batch(openai_client, [chat_line(f"s{i}") for i in range(3)])
    assert openai_client.batches.retrieve(created.id).status == "validating"

    run_batch_task.apply(args=[created.id])
    run_batch_task.apply(args=[created.id])

    batch = openai_client.batches.retrieve(created.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    assert len(billed_rows(created.id)) == 3


def test_a_line_billed_just_before_a_restart_is_not_run_again(openai_client):
    batch = wait_for_end(openai_client, run_batch(openai_client, [chat_line(f"c{i}") for i in range(3)]).id)
    billed = billed_rows(batch.id)
    # The process stopped after the line's usage committed and before its answer was kept.
    lost = BatchLine.objects.get(batch_id=batch.id, custom_id="c1")
    BatchLine.objects.filter(pk=lost.pk).update(status=BatchLine.Status.PENDING, response=None, status_code=None)
    Batch.objects.filter(pk=batch.id).update(status=Batch.Status.IN_PROGRESS, request_completed=2,
                                             completed_at=None)

    run_batch_task.apply(args=[batch.id])

    assert billed_rows(batch.id) == billed  # not billed a second time
    again = openai_client.batches.retrieve(batch.id)
    assert (again.request_counts.completed, again.request_counts.failed) == (2, 1)
    interrupted = results(openai_client, again.error_file_id)["c1"]
    assert interrupted["response"] is None and interrupted["error"]["code"] == "line_interrupted"


def test_cancel_stops_new_lines_and_bills_what_ran(openai_client, settings):
    settings.TOLLGATE_BATCH_CONCURRENCY = 1
    created = run_batch(openai_client, [chat_line(f"k{i}", max_tokens=16) for i in range(30)])

    cancelling = openai_client.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_for_end(openai_client, created.id)

    assert batch.status == "cancelled" and batch.cancelling_at and batch.cancelled_at
    ran = batch.request_counts.completed
    assert ran < 30 and batch.request_counts.failed == 0
    assert len(billed_rows(created.id)) == ran
    assert len(results(openai_client, batch.output_file_id)) == ran
    assert BatchLine.objects.filter(batch_id=created.id, status=BatchLine.Status.PENDING).count() == 30 - ran
    # A cancelled batch stays cancelled: cancelling again changes nothing.
    assert openai_client.batches.cancel(created.id).status == "cancelled"


def test_two_runs_of_the_same_batch_at_once_run_each_line_once(openai_client, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(services, "start_batch", lambda batch_id: None)
    created = run_batch(openai_client, [chat_line(f"t{i}", max_tokens=12) for i in range(6)])

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_batch_task.apply, args=[created.id]) for _ in range(2)]
        statuses = sorted(run.result(timeout=120).get() for run in runs)

    assert "completed" in statuses
    batch = wait_for_end(openai_client, created.id)
    assert batch.request_counts.completed == 6 and len(billed_rows(created.id)) == 6


def test_lines_not_run_within_the_completion_window_expire_into_the_error_file(openai_client, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    monkeypatch.setattr(services, "start_batch", lambda batch_id: None)
    created = run_batch(openai_client, [chat_line("late-1"), chat_line("late-2")])
    Batch.objects.filter(pk=created.id).update(expires_at=timezone.now() - timedelta(seconds=1))

    run_batch_task.apply(args=[created.id])

    batch = openai_client.batches.retrieve(created.id)
    assert batch.status == "expired" and batch.expired_at and batch.output_file_id is None
    expired = results(openai_client, batch.error_file_id)
    assert {line["error"]["code"] for line in expired.values()} == {"batch_expired"} and len(expired) == 2
    assert not UsageRecord.objects.filter(batch_id=created.id).exists()


def test_lines_of_a_batch_whose_key_was_revoked_are_not_served(openai_client, tenant, monkeypatch):
    from tenants.services import revoke_api_key

    monkeypatch.setattr(services, "start_batch", lambda batch_id: None)
    created = run_batch(openai_client, [chat_line("r1"), chat_line("r2")])
    revoke_api_key(tenant.key)

    run_batch_task.apply(args=[created.id])

    lines = {line.custom_id: line for line in BatchLine.objects.filter(batch_id=created.id)}
    assert {line.status_code for line in lines.values()} == {401}
    assert not UsageRecord.objects.filter(batch_id=created.id).exists()
