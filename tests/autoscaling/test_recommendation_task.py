"""The periodic recommendation: combined signals + each pool's policy -> a decision; a change is recorded
with its reason (admin), the latest decision and the recommender's state are kept on the policy, and a
pool tied to a Kubernetes Deployment gets the change patched there (dry run by default)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.cache import cache

from autoscaling import sampling, services, tasks
from autoscaling.models import PoolScaling, ScalingDecision
from autoscaling.recommender import PoolSignals
from autoscaling.sampling import LatencyWindow, Sampler
from serving.pools import PoolSnapshot, ReplicaSnapshot
from tests.autoscaling.fake_kubernetes import FakeKubernetes

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def overloaded(at=T0, replicas=2) -> PoolSignals:
    return PoolSignals(pool="interactive", kind="interactive", at=at, replicas=replicas, queue_depth=40,
                       queue_wait_p95_s=1.5, running=64, waiting=8, kv_cache_usage=0.9, tokens_per_s=900.0,
                       requests_per_s=20.0, ttft_p95_s=3.1, busy_share=1.0, capacity_per_replica=32)


@pytest.fixture
def policy():
    return PoolScaling.objects.create(pool="interactive", min_replicas=1, max_replicas=6, ttft_p95_slo_s=1.0,
                                      scale_up_cooldown_s=60, scale_down_cooldown_s=300, warmup_s=120)


def test_a_change_is_recorded_with_its_reason_and_the_state_is_kept(policy):
    [decision] = services.recommend_replicas({"interactive": overloaded()}, now=T0)
    assert decision.changed and decision.desired > 2
    row = ScalingDecision.objects.get()
    assert (row.pool, row.previous, row.desired, row.current) == ("interactive", 2, decision.desired, 2)
    assert "queue 40" in row.reason and "TTFT p95 3.1 s over SLO 1 s" in row.reason
    assert row.signals["queue_depth"] == 40 and row.applied == ""
    policy.refresh_from_db()
    assert policy.desired_replicas == decision.desired and policy.last_reason == decision.reason
    assert len(policy.state["warming"]) == decision.desired - 2

    # The same overload 30 s later: the state read back says replicas are warming, so nothing new is ordered,
    # and an unchanged decision adds no row (only the latest decision on the policy moves).
    [again] = services.recommend_replicas({"interactive": overloaded()}, now=T0 + timedelta(seconds=30))
    assert not again.changed and again.warming == decision.desired - 2
    assert ScalingDecision.objects.count() == 1
    policy.refresh_from_db()
    assert "warming" in policy.last_reason


def test_pools_without_a_policy_or_without_signals_are_left_alone(policy):
    PoolScaling.objects.create(pool="batch", min_replicas=1, max_replicas=4)
    other = PoolSignals(**{**overloaded().__dict__, "pool": "embedding"})
    decisions = services.recommend_replicas({"embedding": other}, now=T0)
    assert decisions == [] and not ScalingDecision.objects.exists()


def test_a_disabled_policy_decides_nothing(policy):
    PoolScaling.objects.filter(pk=policy.pk).update(enabled=False)
    assert services.recommend_replicas({"interactive": overloaded()}, now=T0) == []


def test_the_celery_task_reads_what_the_web_processes_published(policy, settings):
    cache.delete(sampling.INDEX_KEY)
    busy = ReplicaSnapshot(label="http://gpu-1:8000", url="http://gpu-1:8000", healthy=True, outstanding=32,
                           engine={"running": 32, "waiting": 10, "kv_cache_usage": 0.95})
    snapshot = PoolSnapshot(name="interactive", kind="interactive", max_in_flight_per_replica=32, in_flight=32,
                            waiting=50, admitted_total=0, replicas=(busy,))
    for process in ("web-a", "web-b"):
        sampling.publish(Sampler(process, LatencyWindow()).sample([snapshot]))
    assert tasks.recommend_replicas.delay().get() == 1  # eager without a broker: runs here
    row = ScalingDecision.objects.get()
    assert row.previous == 1 and row.desired > 1 and "queue 100" in row.reason
    cache.delete(sampling.INDEX_KEY)


def test_a_pool_tied_to_a_deployment_gets_the_change_as_a_dry_run(policy, settings, tmp_path):
    fake = FakeKubernetes()
    settings.TOLLGATE_KUBECONFIG = fake.kubeconfig(tmp_path / "kubeconfig")
    PoolScaling.objects.filter(pk=policy.pk).update(kubernetes_namespace="ml", kubernetes_deployment="vllm")
    try:
        [decision] = services.recommend_replicas({"interactive": overloaded()}, now=T0)
        assert ScalingDecision.objects.get().applied == "dry-run"
        assert fake.requests[0]["body"] == {"spec": {"replicas": decision.desired}}
        assert fake.replicas == {}
    finally:
        fake.close()


def test_a_refused_patch_is_recorded_and_the_decision_kept(policy, settings, tmp_path):
    fake = FakeKubernetes(refuse_with=403)
    settings.TOLLGATE_KUBECONFIG = fake.kubeconfig(tmp_path / "kubeconfig")
    PoolScaling.objects.filter(pk=policy.pk).update(kubernetes_namespace="ml", kubernetes_deployment="vllm")
    try:
        [decision] = services.recommend_replicas({"interactive": overloaded()}, now=T0)
        row = ScalingDecision.objects.get()
        assert row.applied.startswith("failed:") and "403" in row.applied
        assert row.desired == decision.desired
    finally:
        fake.close()


def test_nonsense_policies_are_refused_in_the_admin_form(admin_client):
    response = admin_client.post("/admin/autoscaling/poolscaling/add/", {
        "pool": "interactive", "enabled": "on", "min_replicas": 5, "max_replicas": 2, "target_busy_share": 0.7,
        "hysteresis": 0.15, "scale_up_cooldown_s": 60, "scale_down_cooldown_s": 600, "warmup_s": 180,
        "max_step_up": 4})
    assert response.status_code == 200 and b"min_replicas" in response.content
    assert not PoolScaling.objects.exists()


def test_decisions_are_listed_in_the_admin(policy, admin_client):
    services.recommend_replicas({"interactive": overloaded()}, now=T0)
    html = admin_client.get("/admin/autoscaling/scalingdecision/").content.decode()
    assert "TTFT p95 3.1 s over SLO 1 s" in html
    assert admin_client.get("/admin/autoscaling/poolscaling/").status_code == 200
