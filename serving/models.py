"""Pools, model deployments and their replicas: where each model is served.

A pool groups deployments that share a scheduling goal (interactive: low
latency; batch: throughput; embedding) and an admission queue. A deployment
puts one catalog model in one pool and lists its replicas: worker URLs
(vLLM or Tollgate's CPU worker) or the in-process engine. With no deployment
for a model, the gateway serves it from the in-process engine in the default
pool (the embedded default).

GPU prices are not here: metering's ``PoolRate`` (keyed by pool name, with
history) turns engine-seconds into GPU cost.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models


class Pool(models.Model):
    class Kind(models.TextChoices):
        INTERACTIVE = "interactive", "Interactive (low latency)"
        BATCH = "batch", "Batch (throughput)"
        EMBEDDING = "embedding", "Embedding"

    name = models.SlugField(max_length=40, unique=True, help_text="Recorded on every usage row (e.g. interactive).")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.INTERACTIVE)
    max_in_flight_per_replica = models.PositiveIntegerField(
        default=32, help_text="Requests one replica runs at once (its max_num_seqs); more wait in the pool's queue.")
    max_queue = models.PositiveIntegerField(
        default=256, help_text="Requests that may wait for a slot; past this the gateway answers 429 + Retry-After.")
    max_batch_wait_ms = models.FloatField(
        default=2.0, help_text="How long an embedding batch waits to fill (interactive: small, batch: larger).")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class Deployment(models.Model):
    """One catalog model served in one pool."""

    model = models.CharField(max_length=100, unique=True, help_text="Catalog model name, e.g. tollgate-small.")
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="deployments")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return f"{self.model} in {self.pool.name}"


class Replica(models.Model):
    """One engine that serves a deployment: a worker URL, or blank for the in-process engine."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    url = models.URLField(blank=True, help_text="Worker base URL (http://host:port); blank = in-process engine.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["deployment", "id"]
        constraints = [models.UniqueConstraint(fields=["deployment", "url"], name="one_replica_per_url")]

    def clean(self):
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValidationError({"url": "Use an http(s) URL."})

    @property
    def label(self) -> str:
        return self.url or "in-process"

    def __str__(self) -> str:
        return f"{self.deployment.model} @ {self.label}"
