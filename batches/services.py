"""The Batch API's logic: files, batches, and running a batch's lines through the request flow.

Views, the Celery task, the admin and the management command all call these
plain functions. A line is a request of the batch's org and feature, served
by ``serving.flow.pipeline`` with no HTTP: routed, budget-checked, billed (at
the price book's batch discount: ``RequestContext.batch_id``) and attributed
like any request; its usage rows carry the batch id.

Running a batch again (a Celery worker restarted, the web process that ran it
in a thread stopped, ``manage.py resume_batches``) is safe:

* a finished line (completed or failed) is never run again: its state is
  written as soon as it has settled, and counted in the batch in the same
  transaction;
* a line's request id is derived from the batch id and its ``custom_id``,
  so a line that was billed but whose state was not written (the process
  stopped in between) is found in the ledger and not run again: it goes to
  the error file as ``line_interrupted``, billed once;
* a line that was running when the process stopped and never settled had
  nothing billed (its budget hold expires), and simply runs again;
* one runner at a time per batch: a second run of the same batch while the
  first still runs (a task redelivered early, ``resume_batches`` beside a
  worker) returns at once (``_sole_runner``), so no line runs twice at once.

Cancelling stops new lines from starting; lines already running finish and
are billed, and what ran is in the output file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import BigIntegerField, Case, F, Min, Q, Sum, Value, When
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Greatest, Least
from django.utils import timezone

from autoscaling.sampling import PendingWork
from metering.models import UsageRecord
from serving import errors
from serving.flow.context import RequestContext
from serving.flow.pipeline import serve_chat_blocking, serve_completions_blocking, serve_embeddings_blocking
from serving.models import Deployment, Pool
from serving.pools import DEFAULT_POOL
from serving.protocol import ChatCompletionRequest, EmbeddingRequest, TextCompletionRequest, parse_request
from tenants.models import ApiKey
from tenants.services import TenantContext

from .models import Batch, BatchFile, BatchLine

logger = logging.getLogger(__name__)
RUN_BATCH_TASK = "batches.run_batch"  # the Celery task's name (batches/tasks.py)


@dataclass(frozen=True)
class LineEndpoint:
    wire_type: type
    serve: object  # the flow's blocking entry point for this endpoint


ENDPOINTS = {
    "/v1/chat/completions": LineEndpoint(ChatCompletionRequest, serve_chat_blocking),
    "/v1/completions": LineEndpoint(TextCompletionRequest, serve_completions_blocking),
    "/v1/embeddings": LineEndpoint(EmbeddingRequest, serve_embeddings_blocking),
}
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
EXPIRED_LINE = "batch_expired"  # the error code of a line the completion window ended before
# Namespace of the request ids derived for batch lines (uuid5 of batch id and custom_id).
LINE_REQUEST_NAMESPACE = uuid.UUID("6a1f3c1e-2b7d-5e4a-9c0f-7d2e8b1a4c55")


def line_request_id(batch_id: str, custom_id: str) -> str:
    """The request id of a batch line: the same on every run of the batch, so a replay is recognized."""
    return uuid.uuid5(LINE_REQUEST_NAMESPACE, f"{batch_id}\n{custom_id}").hex


# ----------------------------------------------------------------- files


@dataclass(frozen=True)
class InputLine:
    custom_id: str
    method: str
    url: str
    body: dict


def parse_input_lines(content: bytes) -> list[InputLine]:
    """The requests of a batch input file (JSONL), or InvalidRequest naming the first bad line."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("The file is not UTF-8 text; a batch input file is JSONL.", param="file",
                                    code="invalid_file")
    lines, seen = [], set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(lines) >= settings.TOLLGATE_BATCH_MAX_LINES:
            raise errors.InvalidRequest(f"The file has more than {settings.TOLLGATE_BATCH_MAX_LINES} requests, the "
                                        "most one batch takes.", param="file", code="too_many_lines")
        lines.append(_input_line(number, raw, seen))
    if not lines:
        raise errors.InvalidRequest("The file has no requests; a batch input file has one JSON object per line.",
                                    param="file", code="empty_file")
    return lines


def _input_line(number: int, raw: str, seen: set[str]) -> InputLine:
    def bad(reason: str) -> errors.InvalidRequest:
        return errors.InvalidRequest(f"Line {number} of the file {reason}.", param="file", code="invalid_line")

    try:
        item = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad("is not valid JSON")
    if not isinstance(item, dict):
        raise bad("is not a JSON object")
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise bad(f"has an unknown field '{unknown[0]}'")
    custom_id, method, url, body = item.get("custom_id"), item.get("method"), item.get("url"), item.get("body")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 512:
        raise bad("needs a 'custom_id' string of 1 to 512 characters")
    if custom_id in seen:
        raise bad(f"repeats the custom_id '{custom_id[:64]}'; each request needs its own")
    if method != "POST":
        raise bad("needs 'method': 'POST'")
    if url not in ENDPOINTS:
        raise bad(f"has 'url' {str(url)[:64]!r}; batches serve {', '.join(sorted(ENDPOINTS))}")
    if not isinstance(body, dict):
        raise bad("needs a 'body' object (the request)")
    seen.add(custom_id)
    return InputLine(custom_id, method, url, body)


def create_file(org_id: int, filename: str, content: bytes, purpose: str) -> BatchFile:
    if purpose != BatchFile.Purpose.BATCH:
        raise errors.InvalidRequest(f"'purpose' must be 'batch' here; got {purpose[:64]!r}.", param="purpose",
                                    code="invalid_value")
    limit = settings.TOLLGATE_BATCH_FILE_MAX_BYTES
    if len(content) > limit:
        raise errors.RequestTooLarge(f"The file is larger than the {limit} bytes a batch input file may have.")
    parse_input_lines(content)
    return BatchFile.objects.create(organization_id=org_id, purpose=purpose, filename=filename[:255] or "input.jsonl",
                                    bytes=len(content), content=content)


def org_file(org_id: int, file_id: str) -> BatchFile:
    found = BatchFile.objects.filter(organization_id=org_id, pk=file_id).defer("content").first()
    if found is None:
        raise errors.NotFound(f"No such File object: {file_id[:64]}", param="file_id")
    return found


def file_content(org_id: int, file_id: str) -> bytes:
    org_file(org_id, file_id)
    return bytes(BatchFile.objects.values_list("content", flat=True).get(pk=file_id))


def delete_file(org_id: int, file_id: str) -> BatchFile:
    found = org_file(org_id, file_id)
    BatchFile.objects.filter(pk=found.pk).delete()
    return found


def list_files(org_id: int, *, purpose: str | None, after: str | None, limit: int,
               newest_first: bool = True) -> tuple[list[BatchFile], bool]:
    files = BatchFile.objects.filter(organization_id=org_id).defer("content")
    if purpose:
        files = files.filter(purpose=purpose)
    return _page(files, after, limit, newest_first)


def _page(queryset, after: str | None, limit: int, newest_first: bool = True):
    """One page of a list by id (ids are time-ordered), after the id ``after``; and whether more follow."""
    queryset = queryset.order_by("-pk" if newest_first else "pk")
    if after:
        queryset = queryset.filter(pk__lt=after) if newest_first else queryset.filter(pk__gt=after)
    rows = list(queryset[:limit + 1])
    return rows[:limit], len(rows) > limit


# ----------------------------------------------------------------- batches


def create_batch(tenant: TenantContext, *, input_file_id: str, endpoint: str, completion_window: str,
                 metadata: dict | None) -> Batch:
    """A new batch of the input file's requests (status validating); it starts running once committed."""
    if endpoint not in ENDPOINTS:
        raise errors.InvalidRequest(f"'endpoint' must be one of {', '.join(sorted(ENDPOINTS))}.", param="endpoint",
                                    code="invalid_value")
    if completion_window not in COMPLETION_WINDOWS:
        raise errors.InvalidRequest("'completion_window' must be '24h'.", param="completion_window",
                                    code="invalid_value")
    source = org_file(tenant.org_id, input_file_id)
    if source.purpose != BatchFile.Purpose.BATCH:
        raise errors.InvalidRequest(f"The file {input_file_id} has purpose '{source.purpose}'; a batch reads a file "
                                    "uploaded with purpose 'batch'.", param="input_file_id", code="invalid_file")
    lines = parse_input_lines(file_content(tenant.org_id, input_file_id))
    other = next((line for line in lines if line.url != endpoint), None)
    if other is not None:
        raise errors.InvalidRequest(f"The request '{other.custom_id[:64]}' is for {other.url}, not this batch's "
                                    f"endpoint {endpoint}; one batch serves one endpoint.", param="endpoint",
                                    code="mismatched_endpoint")
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.create(
            organization_id=tenant.org_id, api_key_id=tenant.api_key_id, tenant=dataclasses.asdict(tenant),
            endpoint=endpoint, completion_window=completion_window, input_file_id=input_file_id,
            metadata=metadata, request_total=len(lines), created_at=now,
            expires_at=now + COMPLETION_WINDOWS[completion_window])
        BatchLine.objects.bulk_create([
            BatchLine(batch=batch, line_number=number, custom_id=line.custom_id, body=line.body,
                      request_id=line_request_id(batch.pk, line.custom_id))
            for number, line in enumerate(lines, start=1)
        ], batch_size=1000)
        transaction.on_commit(lambda: start_batch(batch.pk))
    return batch


def org_batch(org_id: int, batch_id: str) -> Batch:
    found = Batch.objects.filter(organization_id=org_id, pk=batch_id).first()
    if found is None:
        raise errors.NotFound(f"No such Batch object: {batch_id[:64]}", param="batch_id")
    return found


def list_batches(org_id: int, *, after: str | None, limit: int) -> tuple[list[Batch], bool]:
    return _page(Batch.objects.filter(organization_id=org_id), after, limit)


def cancel_batch(org_id: int, batch_id: str) -> Batch:
    """Stop starting new lines (status cancelling); the running batch finishes what is in flight, then cancelled."""
    batch = org_batch(org_id, batch_id)
    if batch.status in Batch.FINAL or batch.status == Batch.Status.CANCELLING:
        if batch.status in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
            return batch
        raise errors.InvalidRequest(f"Cannot cancel a batch that is {batch.status}.", param="batch_id",
                                    code="invalid_state")
    Batch.objects.filter(pk=batch.pk).exclude(status__in=Batch.FINAL).update(
        status=Batch.Status.CANCELLING, cancelling_at=timezone.now())
    batch.refresh_from_db()
    return batch


# ----------------------------------------------------------------- running


def start_batch(batch_id: str) -> None:
    """Run the batch on a Celery worker; without a broker, on a thread of this process (the call returns now)."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        threading.Thread(target=_run_in_thread, args=(batch_id,), name=f"batch-{batch_id}", daemon=True).start()
        return
    # By name (batches/tasks.py registers it), so this module never imports the task module that imports it.
    current_app.send_task(RUN_BATCH_TASK, args=[batch_id], priority=settings.TOLLGATE_BATCH_TASK_PRIORITY)


def _run_in_thread(batch_id: str) -> None:
    try:
        run_batch(batch_id)
    except Exception:
        logger.exception("batch %s stopped; `manage.py resume_batches` runs it on", batch_id)
    finally:
        connection.close()


def run_batch(batch_id: str) -> Batch:
    """Run every line of the batch that has not run yet, then write its output and error files.

    Returns the batch as it is without running anything when another runner has it.
    """
    with _sole_runner(batch_id) as sole:
        if not sole:
            return Batch.objects.get(pk=batch_id)
        return _run_batch(batch_id)


_running_here: set[str] = set()
_running_here_lock = threading.Lock()


@contextmanager
def _sole_runner(batch_id: str):
    """Whether this is the batch's only runner, for as long as the block runs.

    On PostgreSQL a session advisory lock, taken without waiting: it is the database's, so it holds across
    processes, and a runner whose process dies loses it with its connection. SQLite (the embedded default)
    has one web process, so a set in this process does.
    """
    if connection.vendor != "postgresql":
        with _running_here_lock:
            sole = batch_id not in _running_here
            _running_here.add(batch_id)
        try:
            yield sole
        finally:
            if sole:
                with _running_here_lock:
                    _running_here.discard(batch_id)
        return
    key = int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        sole = cursor.fetchone()[0]
    try:
        yield sole
    finally:
        if sole:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _run_batch(batch_id: str) -> Batch:
    now = timezone.now()
    Batch.objects.filter(pk=batch_id, status=Batch.Status.VALIDATING).update(status=Batch.Status.IN_PROGRESS,
                                                                             in_progress_at=now)
    batch = Batch.objects.get(pk=batch_id)
    if batch.status in Batch.FINAL:
        return batch
    tenant = TenantContext(**batch.tenant)
    pending = list(batch.lines.filter(status=BatchLine.Status.PENDING).order_by("line_number")
                   .values_list("pk", flat=True))
    workers = max(1, settings.TOLLGATE_BATCH_CONCURRENCY)
    with ThreadPoolExecutor(workers, thread_name_prefix=f"batch-{batch_id[-6:]}") as pool:
        # Each line checks, as it starts, that the batch still runs: a cancel stops the lines not yet begun.
        for _ in pool.map(lambda pk: _run_line_in_worker(batch_id, pk, tenant), pending):
            pass
    return finalize_batch(batch_id)


def _run_line_in_worker(batch_id: str, line_pk: int, tenant: TenantContext) -> None:
    close_old_connections()
    try:
        stopping = _stop_reason(batch_id)
        if stopping is None and not _key_is_active(tenant.api_key_id):
            # The key was revoked or expired since the batch was created: what it sent is no longer served.
            error = errors.InvalidApiKey("The API key that created this batch was revoked or has expired.")
            _record(batch_id, line_pk, BatchLine.Status.FAILED, error.status, error.body())
        elif stopping is None:
            run_line(batch_id, line_pk, tenant)
        elif stopping == Batch.Status.EXPIRED:
            _record_expired(batch_id, line_pk)
    finally:
        connection.close()


def _record_expired(batch_id: str, line_pk: int) -> None:
    _record(batch_id, line_pk, BatchLine.Status.FAILED, None, {"error": {
        "code": EXPIRED_LINE, "message": "This line was not run before the batch's completion window ended."}})


def _key_is_active(api_key_id: int) -> bool:
    key = ApiKey.objects.filter(pk=api_key_id).only("revoked_at", "expires_at").first()
    return key is not None and key.is_active


def _stop_reason(batch_id: str) -> str | None:
    status, expires_at = Batch.objects.values_list("status", "expires_at").get(pk=batch_id)
    if status == Batch.Status.CANCELLING:
        return Batch.Status.CANCELLED
    if expires_at <= timezone.now():
        return Batch.Status.EXPIRED
    return None


def run_line(batch_id: str, line_pk: int, tenant: TenantContext) -> None:
    """Serve one line through the flow (no HTTP) and record its answer or error; never twice."""
    line = BatchLine.objects.select_related("batch").get(pk=line_pk)
    if line.status != BatchLine.Status.PENDING:
        return
    if _billed_already(line.request_id):
        _record(batch_id, line_pk, BatchLine.Status.FAILED, None, {"error": {
            "code": "line_interrupted",
            "message": "This line ran and was billed, but the worker stopped before its answer was kept; it is "
                       "not run again (it would be billed twice)."}})
        return
    endpoint = ENDPOINTS[line.batch.endpoint]
    try:
        request = parse_request(endpoint.wire_type, json.dumps(line.body).encode())
        response = _serve_when_there_is_room(batch_id, endpoint, request, line.request_id, tenant)
    except errors.OpenAIError as exc:
        _record(batch_id, line_pk, BatchLine.Status.FAILED, exc.status, exc.body())
        return
    if response is not None:
        _record(batch_id, line_pk, BatchLine.Status.COMPLETED, 200, response.model_dump(mode="json"))
    elif _stop_reason(batch_id) == Batch.Status.EXPIRED:
        _record_expired(batch_id, line_pk)


# Refusals that say "not now" (a rate limit, a full pool queue, no replica free): a batch line can wait.
WAIT_AND_RETRY = (errors.RateLimitExceeded, errors.QueueFull, errors.EngineUnavailable)


def _serve_when_there_is_room(batch_id: str, endpoint: LineEndpoint, request, request_id: str,
                              tenant: TenantContext):
    """The line's answer; a refusal that says "not now" is waited out (its Retry-After, within limits) and
    tried again, up to TOLLGATE_BATCH_LINE_MAX_TRIES, while the batch still runs. None if it stopped meanwhile.

    Each try is the same request (same id): what a failed try ran is recorded and not billed, so trying
    again bills the line once.
    """
    for tries in range(1, settings.TOLLGATE_BATCH_LINE_MAX_TRIES + 1):
        ctx = RequestContext(tenant=tenant, request=request, request_id=request_id, batch_id=batch_id)
        try:
            return endpoint.serve(ctx)
        except WAIT_AND_RETRY as exc:
            if tries == settings.TOLLGATE_BATCH_LINE_MAX_TRIES or _billed_already(request_id):
                raise
            wait = exc.headers.get("Retry-After", "1")
            time.sleep(min(float(wait) if wait.isdigit() else 1.0, settings.TOLLGATE_BATCH_LINE_MAX_WAIT_S))
            if _stop_reason(batch_id) is not None:
                return None  # cancelled or expired while waiting: the line stays pending
    return None


def _billed_already(request_id: str) -> bool:
    """Whether a line's request (or, for a list of prompts, one of its parts) has a billed ledger row."""
    rows = UsageRecord.objects.filter(Q(request_id=request_id) | Q(request_id__startswith=f"{request_id}-"))
    return rows.filter(status__in=(UsageRecord.Status.OK, UsageRecord.Status.CANCELLED)).exists()


def _record(batch_id: str, line_pk: int, status: str, status_code: int | None, response: dict) -> None:
    """A line's end and the batch's count, in one transaction; only the first run to finish a line counts it."""
    counter = "request_completed" if status == BatchLine.Status.COMPLETED else "request_failed"
    with transaction.atomic():
        changed = BatchLine.objects.filter(pk=line_pk, status=BatchLine.Status.PENDING).update(
            status=status, status_code=status_code, response=response, finished_at=timezone.now())
        if changed:
            Batch.objects.filter(pk=batch_id).update(**{counter: F(counter) + 1})


def finalize_batch(batch_id: str) -> Batch:
    """Write the output and error files and end the batch (completed, cancelled or expired)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        if batch.status in Batch.FINAL:
            return batch
        now = timezone.now()
        final = _stop_reason(batch_id) or Batch.Status.COMPLETED
        if final == Batch.Status.EXPIRED and not batch.lines.filter(
                status=BatchLine.Status.FAILED, response__error__code=EXPIRED_LINE).exists():
            final = Batch.Status.COMPLETED  # every line ran in time; the window ended while finishing
        batch.status, batch.finalizing_at = Batch.Status.FINALIZING, now
        batch.output_file = _results_file(batch, BatchLine.Status.COMPLETED, "output")
        batch.error_file = _results_file(batch, BatchLine.Status.FAILED, "errors")
        # Counted afresh from the lines, so the final counts hold whatever happened to the running ones.
        batch.request_completed = batch.lines.filter(status=BatchLine.Status.COMPLETED).count()
        batch.request_failed = batch.lines.filter(status=BatchLine.Status.FAILED).count()
        batch.status = final
        setattr(batch, {Batch.Status.COMPLETED: "completed_at", Batch.Status.CANCELLED: "cancelled_at",
                        Batch.Status.EXPIRED: "expired_at"}[final], timezone.now())
        batch.save()
    return batch


def _results_file(batch: Batch, status: str, kind: str) -> BatchFile | None:
    """The lines that ended with ``status``, in input order, as OpenAI's batch output JSONL; None when none did."""
    out = []
    for line in batch.lines.filter(status=status).order_by("line_number").iterator():
        if line.status_code is None:  # not served at all (interrupted, expired): the error says why
            entry = {"id": f"batch_req_{line.request_id}", "custom_id": line.custom_id, "response": None,
                     "error": line.response["error"]}
        else:
            entry = {"id": f"batch_req_{line.request_id}", "custom_id": line.custom_id,
                     "response": {"status_code": line.status_code, "request_id": line.request_id,
                                  "body": line.response},
                     "error": None}
        out.append(json.dumps(entry, ensure_ascii=False))
    if not out:
        return None
    content = ("\n".join(out) + "\n").encode()
    return BatchFile.objects.create(organization_id=batch.organization_id, purpose=BatchFile.Purpose.BATCH_OUTPUT,
                                    filename=f"{batch.pk}_{kind}.jsonl", bytes=len(content), content=content)


def unfinished_batches() -> list[str]:
    return list(Batch.objects.exclude(status__in=Batch.FINAL).order_by("created_at").values_list("pk", flat=True))


# ----------------------------------------------------------------- pending work, for the autoscaler

# Batches whose lines may still be sent: not cancelling (no new line starts), not final.
_SENDING = (Batch.Status.VALIDATING, Batch.Status.IN_PROGRESS)


def _max_tokens_of_line():
    """A line's output cap as the gateway applies it: max_completion_tokens, else max_tokens, else the
    default, at most the limit, times ``n`` choices. A value that is not a whole number (the line will be
    refused when it runs) counts as the default; text, so a bad line never breaks the query."""
    def whole(key: str):
        return Case(When(**{f"{key}__regex": r"^[0-9]{1,9}$"}, then=Cast(key, BigIntegerField())), default=None)

    cap = Coalesce(whole("max_completion_tokens"), whole("max_tokens"), Value(settings.TOLLGATE_DEFAULT_MAX_TOKENS))
    return Least(cap, Value(settings.TOLLGATE_MAX_TOKENS_LIMIT)) * Greatest(Coalesce(whole("n"), Value(1)), Value(1))


def pool_backlog() -> dict[str, PendingWork]:
    """The pending lines of running batches, per pool they will be served by: their output tokens (each
    line's max_tokens: an upper bound, as the budget hold is) and the earliest batch's deadline.

    The autoscaler reads this through TOLLGATE_AUTOSCALE_BACKLOG_SOURCES, so a batch pool is sized for
    lines not yet sent to it. A line's pool is its model's deployment's; a model with no deployment (or
    ``auto``, routed when the line runs) is served by the default pool, as the gateway does. Embedding
    lines generate no tokens and are left out. A batch past its window is left out (its lines will not run).
    """
    lines = (BatchLine.objects
             .filter(status=BatchLine.Status.PENDING, batch__status__in=_SENDING, batch__expires_at__gt=timezone.now())
             .exclude(batch__endpoint="/v1/embeddings")
             .annotate(model=KT("body__model"), max_completion_tokens=KT("body__max_completion_tokens"),
                       max_tokens=KT("body__max_tokens"), n=KT("body__n"))
             .values("model")
             .annotate(tokens=Sum(_max_tokens_of_line()), due=Min("batch__expires_at")))
    pools = {d.model: (d.pool.name, d.pool.kind)
             for d in Deployment.objects.filter(enabled=True).select_related("pool")}
    out: dict[str, PendingWork] = {}
    for row in lines:
        name, kind = pools.get(row["model"], (DEFAULT_POOL, Pool.Kind.INTERACTIVE))
        seen = out.get(name)
        tokens, due = int(row["tokens"] or 0), row["due"]
        if seen is not None:
            tokens, due = tokens + seen.tokens, min(due, seen.due)
        out[name] = PendingWork(tokens=tokens, due=due, kind=kind)
    return out
