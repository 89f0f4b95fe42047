"""The Batch API's data: uploaded files, batches, and one row per line of a batch.

File content lives in the database (a binary column), not under
TOLLGATE_VAR_DIR: every web process and Celery worker reads the same bytes
with no shared filesystem, a file and the batch that wrote it commit
together, and deleting a file is one row. The size limit
(TOLLGATE_BATCH_FILE_MAX_BYTES) keeps that within what PostgreSQL handles
well; a deployment with far larger batches would move content to object
storage behind the same two functions (``store_content``/``read_content``).

A line's state (``BatchLine``) is written as soon as the line has settled, and
its request id is derived from the batch id and its ``custom_id``, so a batch
that is run again (a worker restarted) skips finished lines and never bills
a line twice (batches.services.run_line says how).
"""

from __future__ import annotations

import uuid6
from django.db import models
from django.utils import timezone


def new_file_id() -> str:
    return f"file-{uuid6.uuid7().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid6.uuid7().hex}"


class BatchFile(models.Model):
    class Purpose(models.TextChoices):
        BATCH = "batch"
        BATCH_OUTPUT = "batch_output"

    id = models.CharField(primary_key=True, max_length=40, default=new_file_id, editable=False)
    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.PositiveBigIntegerField()
    content = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.filename}"


class Batch(models.Model):
    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    FINAL = (Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED)

    id = models.CharField(primary_key=True, max_length=40, default=new_batch_id, editable=False)
    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("tenants.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    # Who each line is billed to: the creating key's TenantContext (org, feature, user), as plain data.
    tenant = models.JSONField()
    endpoint = models.CharField(max_length=40)
    completion_window = models.CharField(max_length=8, default="24h")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    # The id only: the lines are copied into BatchLine when the batch is created, so the file may be deleted.
    input_file_id = models.CharField(max_length=40)
    output_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error_file = models.ForeignKey(BatchFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    errors = models.JSONField(null=True, blank=True)  # validation errors of the input file, as OpenAI lists them
    metadata = models.JSONField(null=True, blank=True)
    request_total = models.PositiveIntegerField(default=0)
    request_completed = models.PositiveIntegerField(default=0)
    request_failed = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"
        indexes = [models.Index(fields=["organization", "-created_at"])]

    def __str__(self) -> str:
        return self.id


class BatchLine(models.Model):
    """One request of a batch and, once it has run, its answer (or error) for the output (or error) file."""

    class Status(models.TextChoices):
        PENDING = "pending"
        COMPLETED = "completed"  # answered: a line of the output file
        FAILED = "failed"  # refused or failed: a line of the error file

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    line_number = models.PositiveIntegerField()
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    request_id = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)  # the answer's body, or the error's
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "line_number"]
        constraints = [models.UniqueConstraint(fields=["batch", "custom_id"], name="one_line_per_custom_id")]
        indexes = [models.Index(fields=["batch", "status"])]

    def __str__(self) -> str:
        return f"{self.batch_id} {self.custom_id}"
