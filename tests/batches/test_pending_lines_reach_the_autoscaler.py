"""The Batch API's lines not yet sent reach the autoscaler (issue 13, follow-up): the batch pool's combined
signals carry their output tokens in the backlog and the earliest batch's deadline in backlog_due_s, through
the setting TOLLGATE_AUTOSCALE_BACKLOG_SOURCES (autoscaling never imports batches); a cancelled or completed
batch, and a line already answered, drop out."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from autoscaling import sampling
from autoscaling.models import PoolScaling
from autoscaling.sampling import LatencyWindow, Sampler
from autoscaling.services import recommend_replicas
from batches import services
from batches.models import Batch, BatchLine
from serving.models import Deployment, Pool
from serving.pools import PoolSnapshot, ReplicaSnapshot

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_store(settings):
    assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache"), "these tests need REDIS_URL"
    assert settings.TOLLGATE_AUTOSCALE_BACKLOG_SOURCES == ["batches.services.pool_backlog"]
    cache.delete_many([sampling.INDEX_KEY])
    yield
    cache.delete_many([sampling.INDEX_KEY])


@pytest.fixture
def batch_pool(db):
    pool = Pool.objects.create(name="batch", kind=Pool.Kind.BATCH, max_in_flight_per_replica=32)
    Deployment.objects.create(model="tollgate-small", pool=pool)
    return pool


def make_batch(org, bodies: list[dict], *, age: timedelta = timedelta(0), status=Batch.Status.IN_PROGRESS,
               endpoint="/v1/chat/completions") -> Batch:
    created = timezone.now() - age
    batch = Batch.objects.create(organization=org, tenant={}, endpoint=endpoint, completion_window="24h",
                                 status=status, input_file_id="file-test", request_total=len(bodies),
                                 created_at=created, expires_at=created + services.COMPLETION_WINDOWS["24h"])
    BatchLine.objects.bulk_create([
        BatchLine(batch=batch, line_number=i, custom_id=f"line-{i}", body=body,
                  request_id=services.line_request_id(batch.pk, f"line-{i}"))
        for i, body in enumerate(bodies, start=1)])
    return batch


def chat(model="tollgate-small", **more) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Summarize."}], **more}


def publish_batch_pool_sample():
    """One web process sees the batch pool: one worker, 10 sequences running, nothing queued."""
    worker = ReplicaSnapshot(label="http://gpu-b:8000", url="http://gpu-b:8000", healthy=True, outstanding=10,
                             engine={"running": 10, "waiting": 0, "kv_cache_usage": 0.2})
    snapshot = PoolSnapshot(name="batch", kind="batch", max_in_flight_per_replica=32, in_flight=10, waiting=0,
                            admitted_total=0, replicas=(worker,))
    sampling.publish(Sampler("web-a", LatencyWindow()).sample([snapshot]))


def test_pending_lines_are_the_batch_pools_backlog_due_by_the_earliest_batch(tenant, batch_pool, settings):
    settings.TOLLGATE_DEFAULT_MAX_TOKENS = 64
    settings.TOLLGATE_MAX_TOKENS_LIMIT = 1024
    fresh = make_batch(tenant.org, [chat(max_tokens=100), chat(max_completion_tokens=200), chat(),
                                    chat(max_tokens=50, n=2), chat(max_tokens=5000), chat(max_tokens="lots")])
    # 100 + 200 + 64 (default) + 2 x 50 + 1024 (the limit) + 64 (not a number: the default) = 1552 tokens
    older = make_batch(tenant.org, [chat(max_tokens=300), chat(max_tokens=400)], age=timedelta(hours=21))
    BatchLine.objects.filter(batch=older, custom_id="line-2").update(status=BatchLine.Status.COMPLETED)
    # Another model with no deployment: the default pool's, not the batch pool's.
    make_batch(tenant.org, [chat(model="tollgate-mini", max_tokens=700)])
    make_batch(tenant.org, [{"model": "all-minilm-l6-v2", "input": "x"}], endpoint="/v1/embeddings")
    publish_batch_pool_sample()

    now = timezone.now()
    signals = sampling.combined_signals(now)

    batch = signals["batch"]
    assert batch.replicas == 1 and batch.running == 10
    assert batch.backlog_tokens == 1552 + 300
    # The older batch (created 21 h ago, 24 h window) is due first: in about 3 h.
    assert batch.backlog_due_s == pytest.approx((older.expires_at - now).total_seconds())
    assert 2.9 * 3600 < batch.backlog_due_s < 3.1 * 3600
    assert fresh.expires_at > older.expires_at
    # The undeployed model's line is the default pool's; no process samples it, so it gets a signal of its own.
    assert signals["interactive"].backlog_tokens == 700 and signals["interactive"].replicas == 0


def test_a_cancelled_or_completed_batch_drops_out(tenant, batch_pool):
    cancelled = make_batch(tenant.org, [chat(max_tokens=100)], age=timedelta(hours=20))
    completed = make_batch(tenant.org, [chat(max_tokens=200)], age=timedelta(hours=22))
    running = make_batch(tenant.org, [chat(max_tokens=400)])
    publish_batch_pool_sample()
    before = sampling.combined_signals()["batch"]
    assert before.backlog_tokens == 700
    assert before.backlog_due_s == pytest.approx((completed.expires_at - timezone.now()).total_seconds(), abs=5)

    services.cancel_batch(tenant.org.id, cancelled.id)
    Batch.objects.filter(pk=completed.pk).update(status=Batch.Status.COMPLETED)
    now = timezone.now()
    after = sampling.combined_signals(now)["batch"]
    assert after.backlog_tokens == 400
    assert after.backlog_due_s == pytest.approx((running.expires_at - now).total_seconds())

    Batch.objects.filter(pk=running.pk).update(status=Batch.Status.COMPLETED)
    idle = sampling.combined_signals()["batch"]
    assert idle.backlog_tokens == 0 and idle.backlog_due_s is None


def test_the_recommender_sizes_the_batch_pool_for_lines_not_yet_sent(tenant, batch_pool):
    PoolScaling.objects.create(pool="batch", min_replicas=1, max_replicas=10, target_busy_share=1.0,
                               completion_window_s=24 * 3600, replica_tokens_per_s=1.0, warmup_s=60,
                               deadline_margin=0.5)
    # 20 lines x 1 000 tokens due in 2 h (created 22 h ago); one replica makes 1 tok/s: far too slow. Aimed
    # at half the time left less the warm-up: 20 000 / (3 600 - 60 s) = 5.65 tok/s.
    make_batch(tenant.org, [chat(max_tokens=1000) for _ in range(20)], age=timedelta(hours=22))
    publish_batch_pool_sample()
    [decision] = recommend_replicas()
    assert decision.pool == "batch" and decision.desired > 1
    assert "batch: 20k tokens due in 2 h needs 5.65 tok/s" in decision.reason
