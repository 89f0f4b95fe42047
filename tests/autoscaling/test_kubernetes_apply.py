"""Applying a desired count to a Kubernetes Deployment: the scale subresource patched through the official
client, as the API server's dry run unless configured otherwise. The API server is a local stand-in
(tests/autoscaling/fake_kubernetes.py): none can run here."""

from __future__ import annotations

import pytest

from autoscaling import kubernetes
from tests.autoscaling.fake_kubernetes import FakeKubernetes


@pytest.fixture
def api_server(tmp_path, settings):
    fake = FakeKubernetes()
    settings.TOLLGATE_KUBECONFIG = fake.kubeconfig(tmp_path / "kubeconfig")
    yield fake
    fake.close()


def test_the_patch_body_sets_only_the_replica_count():
    assert kubernetes.scale_patch(3) == {"spec": {"replicas": 3}}
    with pytest.raises(ValueError):
        kubernetes.scale_patch(-1)


def test_by_default_the_change_is_the_api_servers_dry_run(api_server, settings):
    assert settings.TOLLGATE_AUTOSCALE_KUBERNETES_DRY_RUN is True  # the shipped default
    assert kubernetes.apply_replicas("ml", "vllm-interactive", 3) == "dry-run"
    [request] = api_server.requests
    assert request["path"] == "/apis/apps/v1/namespaces/ml/deployments/vllm-interactive/scale"
    assert request["query"].get("dryRun") == ["All"]
    assert request["body"] == {"spec": {"replicas": 3}}
    assert "patch" in request["content_type"]
    assert api_server.replicas == {}  # nothing persisted


def test_with_dry_run_off_the_deployment_is_scaled(api_server, settings):
    settings.TOLLGATE_AUTOSCALE_KUBERNETES_DRY_RUN = False
    assert kubernetes.apply_replicas("ml", "vllm-interactive", 5) == "applied"
    assert "dryRun" not in api_server.requests[0]["query"]
    assert api_server.replicas == {("ml", "vllm-interactive"): 5}


def test_a_refusal_is_raised_to_the_caller(tmp_path, settings):
    fake = FakeKubernetes(refuse_with=403)
    settings.TOLLGATE_KUBECONFIG = fake.kubeconfig(tmp_path / "kubeconfig")
    try:
        from kubernetes.client.exceptions import ApiException

        with pytest.raises(ApiException) as caught:
            kubernetes.apply_replicas("ml", "vllm-interactive", 2)
        assert caught.value.status == 403
    finally:
        fake.close()
