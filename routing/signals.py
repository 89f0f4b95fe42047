"""Drop the per-process policy memo (core/memo.py) when a routing policy changes here."""

from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from . import services
from .models import RoutingPolicy


@receiver([post_save, post_delete], sender=RoutingPolicy, dispatch_uid="routing.forget_policies")
@receiver(m2m_changed, sender=RoutingPolicy.allowed_models.through, dispatch_uid="routing.forget_allowed_models")
def forget_policies(sender, **kwargs):
    services.forget_cached_policies()
