from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Demo data for the embedded default (`manage.py seed_demo`): above every app it seeds."""

    name = "demo"
    verbose_name = "Demo"
