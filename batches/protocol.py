"""Wire types of OpenAI's Files and Batches APIs (as ``serving.protocol`` does for the rest of /v1)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from serving.protocol import RequestModel, ResponseModel

from .models import Batch, BatchFile

MAX_METADATA_PAIRS = 16


class BatchCreateRequest(RequestModel):
    input_file_id: Annotated[str, Field(min_length=1, max_length=64)]
    endpoint: str
    completion_window: str
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]],
                        Field(max_length=MAX_METADATA_PAIRS)] | None = None


def _timestamp(moment) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


class FileObject(ResponseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def of(cls, file: BatchFile) -> "FileObject":
        return cls(id=file.pk, bytes=file.bytes, created_at=_timestamp(file.created_at), filename=file.filename,
                   purpose=file.purpose)


class FileDeleted(ResponseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class FileList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class RequestCounts(ResponseModel):
    total: int
    completed: int
    failed: int


class BatchError(ResponseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(ResponseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(ResponseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None

    @classmethod
    def of(cls, batch: Batch) -> "BatchObject":
        return cls(
            id=batch.pk, endpoint=batch.endpoint, input_file_id=batch.input_file_id,
            errors=BatchErrors.model_validate(batch.errors) if batch.errors else None,
            completion_window=batch.completion_window, status=batch.status, output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id, created_at=_timestamp(batch.created_at),
            **{name: _timestamp(getattr(batch, name)) for name in (
                "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                "cancelling_at", "cancelled_at")},
            request_counts=RequestCounts(total=batch.request_total, completed=batch.request_completed,
                                         failed=batch.request_failed),
            metadata=batch.metadata,
        )


class BatchList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
