"""Apply a pool's desired replica count to a Kubernetes Deployment, through the official client.

Off unless a pool's ``PoolScaling`` names a namespace and a Deployment. Then a change is sent as a patch of
the Deployment's ``scale`` subresource (what the HorizontalPodAutoscaler itself changes, so the service
account needs only ``patch`` on ``deployments/scale``), with the API server's ``dryRun=All`` unless
``TOLLGATE_AUTOSCALE_KUBERNETES_DRY_RUN`` is false: by default the server checks the change (permissions,
admission) and persists nothing. Credentials: in a pod, its service account; elsewhere the kubeconfig
(``TOLLGATE_KUBECONFIG``, else the client's default ``~/.kube/config``).

Where a KEDA ScaledObject or an HPA scales the Deployment from ``/metrics`` instead (docs/deployment.md),
leave the fields blank: two controllers must not both set one Deployment's replicas.
"""

from __future__ import annotations

import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def scale_patch(replicas: int) -> dict:
    """The body patched onto ``deployments/<name>/scale``."""
    if replicas < 0:
        raise ValueError("replicas must be >= 0")
    return {"spec": {"replicas": int(replicas)}}


def apps_api():
    """An AppsV1Api with this process's credentials (in-cluster first, then the kubeconfig)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=settings.TOLLGATE_KUBECONFIG or None)
    return client.AppsV1Api()


def apply_replicas(namespace: str, deployment: str, replicas: int, *, dry_run: bool | None = None,
                   api=None) -> str:
    """Patch the Deployment's scale to ``replicas``. Returns "dry-run" or "applied"; raises the client's
    ApiException (or a connection error) when the API server refuses or cannot be reached."""
    dry = settings.TOLLGATE_AUTOSCALE_KUBERNETES_DRY_RUN if dry_run is None else dry_run
    api = api or apps_api()
    kwargs = {"dry_run": "All"} if dry else {}
    api.patch_namespaced_deployment_scale(deployment, namespace, scale_patch(replicas), **kwargs)
    outcome = "dry-run" if dry else "applied"
    logger.info("kubernetes %s/%s replicas=%d (%s)", namespace, deployment, replicas, outcome)
    return outcome
