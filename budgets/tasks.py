from celery import shared_task
from django.conf import settings

from . import alerts, services


@shared_task(bind=True, name="budgets.tasks.deliver_alert", ignore_result=True, max_retries=None)
def deliver_alert(self, delivery_id: int) -> None:
    """Send one alert on one channel; retry with backoff, then record the delivery as failed."""
    if self.request.is_eager:
        # No broker: this runs in a background thread of the web process (alerts.dispatch_deliveries),
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


@shared_task(name="budgets.tasks.check_forecasts", ignore_result=True)
def check_forecasts() -> int:
    return services.check_all_forecasts()


@shared_task(name="budgets.tasks.release_stale_reservations", ignore_result=True)
def release_stale_reservations() -> int:
    return services.release_stale_reservations()
