"""Celery task of autoscaling: the recommendation, every TOLLGATE_AUTOSCALE_INTERVAL_S from beat."""

from celery import shared_task

from . import services


@shared_task(name="autoscaling.tasks.recommend_replicas", ignore_result=True)
def recommend_replicas() -> int:
    """Returns how many pools changed their desired count."""
    return sum(1 for d in services.recommend_replicas() if d.changed)
