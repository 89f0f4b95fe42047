"""Keep the per-process memo of API keys honest when keys, features or orgs change here."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import ApiKey, Feature, Organization
from .services import forget_cached_keys


@receiver([post_save, post_delete], sender=ApiKey, dispatch_uid="tenants.forget_key")
def forget_key(sender, instance: ApiKey, **kwargs):
    forget_cached_keys(instance.prefix)


@receiver([post_save, post_delete], sender=Feature, dispatch_uid="tenants.forget_keys_feature")
@receiver([post_save, post_delete], sender=Organization, dispatch_uid="tenants.forget_keys_org")
def forget_all_keys(sender, **kwargs):
    # A renamed org or feature shows in every key's record; these edits are rare.
    forget_cached_keys()
