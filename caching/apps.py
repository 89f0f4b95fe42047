from django.apps import AppConfig


class CachingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "caching"
    verbose_name = "Caching"

    def ready(self):
        from . import signals  # noqa: F401  (connects the policy memo invalidation)
