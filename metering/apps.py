from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    verbose_name = "Metering"

    def ready(self):
        from . import signals  # noqa: F401  (connects the memo invalidation receivers)
