from django.db import models
from django.utils import timezone


class CapacityPlan(models.Model):
    """One run of ``manage.py plan_capacity``: its inputs and results as JSON (capacity.planning.run_plan's
    shape; money as Decimal strings). The staff page shows the latest."""

    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    trace = models.CharField(max_length=300, help_text="The trace file, or the synthetic generator and its seed.")
    result = models.JSONField()

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self):
        return f"capacity plan {self.created_at:%Y-%m-%d %H:%M} ({self.trace})"
