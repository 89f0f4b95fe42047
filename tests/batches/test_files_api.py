"""/v1/files with the official openai client: upload JSONL for batches, retrieve, list, content, delete, and
clear OpenAI-shaped refusals for files past the size or line limits or that are not batch input."""

from __future__ import annotations

import openai
import pytest

from .conftest import chat_line, jsonl, upload

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_file_is_uploaded_retrieved_listed_read_and_deleted(openai_client):
    content = jsonl([chat_line("a"), chat_line("b")])
    created = openai_client.files.create(file=("mine.jsonl", content, "application/jsonl"), purpose="batch")
    assert created.object == "file" and created.purpose == "batch" and created.bytes == len(content)
    assert created.filename == "mine.jsonl"

    assert openai_client.files.retrieve(created.id).id == created.id
    assert openai_client.files.content(created.id).content == content
    assert created.id in [f.id for f in openai_client.files.list(purpose="batch").data]

    deleted = openai_client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(created.id)
    assert created.id not in [f.id for f in openai_client.files.list().data]


def test_files_are_listed_by_page(openai_client):
    made = [upload(openai_client, [chat_line(str(i))]).id for i in range(3)]
    page = openai_client.files.list(limit=2)
    assert [f.id for f in page.data] == made[::-1][:2] and page.has_more
    oldest_first = openai_client.files.list(limit=3, order="asc")
    assert [f.id for f in oldest_first.data] == made


def test_a_file_past_the_size_limit_is_refused_with_413(openai_client, settings):
    settings.TOLLGATE_BATCH_FILE_MAX_BYTES = 300
    with pytest.raises(openai.APIStatusError) as refused:
        upload(openai_client, [chat_line(str(i)) for i in range(5)])
    assert refused.value.status_code == 413 and refused.value.body["code"] == "request_too_large"


def test_a_file_past_the_line_limit_is_refused_naming_the_limit(openai_client, settings):
    settings.TOLLGATE_BATCH_MAX_LINES = 2
    with pytest.raises(openai.BadRequestError) as refused:
        upload(openai_client, [chat_line(str(i)) for i in range(3)])
    assert refused.value.body["code"] == "too_many_lines" and "2 requests" in refused.value.body["message"]


@pytest.mark.parametrize("content, says", [
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\nnot json\n', "Line 2"),
    (b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n', "'method'"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/images", "body": {}}\n', "'url'"),
    (jsonl([chat_line("same"), chat_line("same")]), "repeats the custom_id"),
    (b"\n\n", "no requests"),
])
def test_a_file_that_is_not_batch_input_is_refused_saying_why(openai_client, content, says):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.files.create(file=("x.jsonl", content, "application/jsonl"), purpose="batch")
    assert says in refused.value.body["message"] and refused.value.body["param"] == "file"


def test_a_purpose_other_than_batch_is_refused(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.files.create(file=("x.jsonl", jsonl([chat_line("a")]), "application/jsonl"),
                                   purpose="fine-tune")
    assert refused.value.body["param"] == "purpose"


def test_a_batch_is_refused_for_an_unknown_file_a_wrong_endpoint_or_window(openai_client):
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                                     completion_window="24h")
    source = upload(openai_client, [chat_line("a")])
    with pytest.raises(openai.BadRequestError) as mismatched:
        openai_client.batches.create(input_file_id=source.id, endpoint="/v1/embeddings", completion_window="24h")
    assert mismatched.value.body["code"] == "mismatched_endpoint"
    with pytest.raises(openai.BadRequestError) as window:
        openai_client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                     completion_window="48h")
    assert window.value.body["param"] == "completion_window"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(openai_client.base_url), api_key="sk-wrong", max_retries=0).files.list()
