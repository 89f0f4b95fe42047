from celery import shared_task

from . import services


@shared_task(name="batches.run_batch", acks_late=True)
def run_batch_task(batch_id: str) -> str:
    """Run a batch's remaining lines; safe to run again after a worker restart (see batches.services)."""
    return services.run_batch(batch_id).status
