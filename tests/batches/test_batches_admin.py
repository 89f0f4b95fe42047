"""Batch progress in the Django admin: every batch with its counts and share done, and its lines."""

import pytest

from .conftest import chat_line, run_batch, wait_for_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("settle_batches")]


def test_the_batches_admin_shows_each_batch_with_its_counts_and_lines(openai_client, admin_client):
    batch = wait_for_end(openai_client, run_batch(openai_client, [chat_line("a"), chat_line("b")]).id)

    listing = admin_client.get("/admin/batches/batch/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert batch.id in page and "100%" in page and "completed" in page

    detail = admin_client.get(f"/admin/batches/batch/{batch.id}/change/").content.decode()
    assert "a" in detail and "b" in detail and batch.output_file_id in detail
    assert admin_client.get("/admin/batches/batchfile/").status_code == 200
