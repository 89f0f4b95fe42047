"""Keep the per-process memo of cache policies honest when a policy changes here."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import CachePolicy
from .services import forget_policies


@receiver([post_save, post_delete], sender=CachePolicy, dispatch_uid="caching.forget_policies")
def forget_changed_policy(sender, **kwargs):
    forget_policies()
