"""Each pool's scaling policy and SLO, the recommender's state between runs, and the decisions it made.

``PoolScaling`` is keyed by the pool's name, not a foreign key to ``serving.Pool``, for the reason
``metering.PoolRate`` is: the pools the embedded default runs (interactive, embedding) exist without a
``Pool`` row, and a policy must be settable for them too; and serving stays unaware of autoscaling.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from .recommender import PoolSLO, ScalingPolicy


class PoolScaling(models.Model):
    pool = models.SlugField(max_length=40, unique=True, help_text="Pool name as serving runs it (e.g. interactive).")
    enabled = models.BooleanField(default=True, help_text="Off: no recommendations for this pool.")
    min_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=4)
    target_busy_share = models.FloatField(
        default=0.7, validators=[MinValueValidator(0.05), MaxValueValidator(1.0)],
        help_text="Share of the replicas' request slots that the load should fill (0.05 to 1).")
    hysteresis = models.FloatField(
        default=0.15, validators=[MinValueValidator(0.0), MaxValueValidator(0.9)],
        help_text="Band around the target inside which the count holds (0.15: 15 %).")
    ttft_p95_slo_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="Interactive SLO: p95 time to first token, seconds.")
    tokens_per_s_slo = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="Batch SLO: tokens a second while there is work.")
    completion_window_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(1.0)],
        help_text="Batch SLO: the waiting work must finish within this many seconds.")
    deadline_margin = models.FloatField(
        default=0.8, validators=[MinValueValidator(0.05), MaxValueValidator(1.0)],
        help_text="Batch: aim to finish waiting work within this share of the time to its deadline (0.8: a fifth "
                  "to spare).")
    replica_tokens_per_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="One replica's throughput, tokens a second (blank: measured from the pool).")
    scale_up_cooldown_s = models.FloatField(default=60, validators=[MinValueValidator(0.0)])
    scale_down_cooldown_s = models.FloatField(
        default=600, validators=[MinValueValidator(0.0)],
        help_text="The load must stay low this long, without a break, before replicas are taken away.")
    warmup_s = models.FloatField(
        default=180, validators=[MinValueValidator(0.0)],
        help_text="How long a new replica takes to serve (GPU node, image, weights): counted as coming meanwhile.")
    max_step_up = models.PositiveIntegerField(default=4, validators=[MinValueValidator(1)])
    max_step_down = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Blank: straight down to what the load of the cooldown window needed.")
    kubernetes_namespace = models.CharField(max_length=63, blank=True)
    kubernetes_deployment = models.CharField(
        max_length=253, blank=True,
        help_text="Set (with the namespace) to apply the desired count to this Deployment; dry-run unless "
                  "TOLLGATE_AUTOSCALE_KUBERNETES_DRY_RUN is false.")

    # What the recommender keeps between runs, and its latest decision (every run updates these).
    state = models.JSONField(default=dict, blank=True, editable=False)
    desired_replicas = models.PositiveIntegerField(null=True, blank=True, editable=False)
    decided_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_reason = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["pool"]
        verbose_name = "pool autoscaling"
        verbose_name_plural = "pool autoscaling"

    def __str__(self) -> str:
        return f"{self.pool} {self.min_replicas}..{self.max_replicas}"

    def slo(self) -> PoolSLO:
        return PoolSLO(ttft_p95_s=self.ttft_p95_slo_s, tokens_per_s=self.tokens_per_s_slo,
                       completion_window_s=self.completion_window_s)

    def policy(self) -> ScalingPolicy:
        return ScalingPolicy(
            min_replicas=self.min_replicas, max_replicas=self.max_replicas, target_busy_share=self.target_busy_share,
            scale_up_cooldown_s=self.scale_up_cooldown_s, scale_down_cooldown_s=self.scale_down_cooldown_s,
            warmup_s=self.warmup_s, hysteresis=self.hysteresis, max_step_up=self.max_step_up,
            max_step_down=self.max_step_down, replica_tokens_per_s=self.replica_tokens_per_s,
            deadline_margin=self.deadline_margin)

    def clean(self):
        try:
            self.policy()
        except (ValueError, TypeError) as exc:
            raise ValidationError(str(exc)) from None
        if bool(self.kubernetes_namespace) != bool(self.kubernetes_deployment):
            raise ValidationError("Give both the Kubernetes namespace and the Deployment, or neither.")


class ScalingDecision(models.Model):
    """A run of the recommender that changed a pool's desired count, with why."""

    pool = models.CharField(max_length=40)
    at = models.DateTimeField(default=timezone.now)
    current = models.PositiveIntegerField(help_text="Replicas ready when it decided.")
    previous = models.PositiveIntegerField(help_text="The desired count before.")
    desired = models.PositiveIntegerField()
    needed = models.PositiveIntegerField(help_text="What load and SLO alone asked for (before cooldowns and bounds).")
    warming = models.PositiveIntegerField(default=0, help_text="Replicas counted as coming capacity.")
    reason = models.TextField()
    signals = models.JSONField(default=dict, help_text="The combined signals it decided on.")
    applied = models.CharField(max_length=200, blank=True,
                               help_text="Kubernetes: blank (not configured), dry-run, applied, or the error.")

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["pool", "-at"])]

    def __str__(self) -> str:
        return f"{self.pool} {self.previous}->{self.desired} at {self.at:%Y-%m-%d %H:%M:%S}"
