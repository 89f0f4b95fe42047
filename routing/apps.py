from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Model routing"

    def ready(self):
        from . import signals  # noqa: F401  (connects the policy memo invalidation)
