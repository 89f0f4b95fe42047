from celery import shared_task

from .shipping import ship_pending_usage


@shared_task(name="metering.tasks.ship_usage", ignore_result=True)
def ship_usage() -> int:
    """Beat runs this every TOLLGATE_SHIP_INTERVAL_S seconds in production."""
    return ship_pending_usage()
