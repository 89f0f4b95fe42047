"""Drop the per-process memo of budget definitions (budgets/services.py) when budgets change here."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from tenants.models import Organization

from .models import Budget
from .services import forget_cached_budgets


@receiver([post_save, post_delete], sender=Budget, dispatch_uid="budgets.forget_budgets")
def forget_org_budgets(sender, instance: Budget, **kwargs):
    forget_cached_budgets(instance.organization_id)


@receiver([post_save, post_delete], sender=Organization, dispatch_uid="budgets.forget_budgets_org")
def forget_all_budgets(sender, **kwargs):
    # The org's time zone decides its budget windows.
    forget_cached_budgets()
