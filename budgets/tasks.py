"""Celery tasks of budgets: alert delivery (handed over by budgets.signals), forecasts, stale reservations."""

import logging
import threading

from celery import shared_task
from django.conf import settings
from django.db import connection

from . import alerts, services

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="budgets.tasks.deliver_alert", ignore_result=True, max_retries=None)
def deliver_alert(self, delivery_id: int) -> None:
    """Send one alert on one channel; retry with backoff, then record the delivery as failed."""
    if self.request.is_eager:
        # No broker: this runs in a background thread of the web process (dispatch_deliveries below),
        # which waits out the same backoff itself; Celery's eager retry would re-raise instead.
        alerts.deliver_with_retries_in_process(delivery_id)
        return
    error = alerts.attempt_delivery(delivery_id)
    if error is None:
        return
    if self.request.retries < settings.TOLLGATE_ALERT_MAX_RETRIES:
        # A worker waits TOLLGATE_ALERT_RETRY_BACKOFF_S, then twice that, and so on.
        raise self.retry(countdown=settings.TOLLGATE_ALERT_RETRY_BACKOFF_S * 2 ** self.request.retries)
    alerts.mark_delivery_failed(delivery_id)


def dispatch_deliveries(delivery_ids: list[int]) -> None:
    """Queue one `deliver_alert` per delivery; without a broker, run them in a background thread of this process."""
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        for delivery_id in delivery_ids:
            deliver_alert.delay(delivery_id)
        return

    def run_in_process():
        try:
            for delivery_id in delivery_ids:
                deliver_alert.apply(args=[delivery_id])
        except Exception:
            logger.exception("budget alert delivery crashed")
        finally:
            connection.close()

    threading.Thread(target=run_in_process, name="budget-alert-delivery", daemon=True).start()


@shared_task(name="budgets.tasks.check_forecasts", ignore_result=True)
def check_forecasts() -> int:
    return services.check_all_forecasts()


@shared_task(name="budgets.tasks.release_stale_reservations", ignore_result=True)
def release_stale_reservations() -> int:
    return services.release_stale_reservations()
