from django.apps import AppConfig


class BudgetsConfig(AppConfig):
    name = "budgets"
    verbose_name = "Budgets"

    def ready(self):
        from . import signals  # noqa: F401  (connects the memo invalidation and alert delivery receivers)
