from django.apps import AppConfig


class AutoscalingConfig(AppConfig):
    name = "autoscaling"
    verbose_name = "Autoscaling"

    def ready(self):
        from metering.signals import ledger_row_observed

        from .sampling import observe_ledger_row

        ledger_row_observed.connect(observe_ledger_row, dispatch_uid="autoscaling.latency_window")
