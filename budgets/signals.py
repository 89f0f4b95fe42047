"""Receivers of budgets: drop the per-process memo of budget definitions (budgets/services.py) when budgets
change here, and hand a newly raised alert's deliveries to Celery (budgets/tasks.py)."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from tenants.models import Organization

from . import tasks
from .alerts import alert_raised
from .models import Alert, Budget
from .services import forget_cached_budgets


@receiver([post_save, post_delete], sender=Budget, dispatch_uid="budgets.forget_budgets")
def forget_org_budgets(sender, instance: Budget, **kwargs):
    forget_cached_budgets(instance.organization_id)


@receiver([post_save, post_delete], sender=Organization, dispatch_uid="budgets.forget_budgets_org")
def forget_all_budgets(sender, **kwargs):
    # The org's time zone decides its budget windows.
    forget_cached_budgets()


@receiver(alert_raised, sender=Alert, dispatch_uid="budgets.deliver_alert")
def deliver_raised_alert(sender, delivery_ids: list[int], **kwargs):
    tasks.dispatch_deliveries(delivery_ids)
