from celery import shared_task

from . import services


@shared_task(name=services.RUN_BATCH_TASK, acks_late=True)
def run_batch_task(batch_id: str) -> str:
    """Run a batch's remaining lines; safe to run again after a worker restart (see batches.services)."""
    return services.run_batch(batch_id).status
