"""Routing policies: which models an org (or one of its features) may use, and how `model: "auto"` picks.

One policy per organization, and optionally one per feature; a feature's
policy replaces its org's as a whole (no field-by-field merge: what an admin
sees on one row is what applies). Requests without any policy route with the
defaults of a new policy.

Only the routing fields are read today (allowed models, default and minimum
tier, classifier confidence). The escalation and token-optimization fields
are the settings those stages will read; they are stored and shown here now
so a policy is set up in one place.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

TIER_HELP = "1 = smallest (cheapest), 3 = strongest; the catalog's tiers."


class RoutingPolicy(models.Model):
    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE,
                                     related_name="routing_policies")
    feature = models.ForeignKey("tenants.Feature", null=True, blank=True, on_delete=models.CASCADE,
                                related_name="+",
                                help_text="Empty: the org's policy. Set: this feature's policy, which replaces "
                                          "the org's for requests of that feature.")

    # --- routing (read by the route stage) ---------------------------------------------------------
    allowed_models = models.ManyToManyField(
        "metering.CatalogModel", blank=True, related_name="+",
        help_text="Models requests may name or `auto` may pick. None selected: every catalog model.")
    default_tier = models.PositiveSmallIntegerField(
        default=2, help_text="Tier `auto` uses when the classifier is not confident enough. " + TIER_HELP)
    min_tier = models.PositiveSmallIntegerField(
        "minimum tier", default=1,
        help_text="No request is served below this tier: `auto` never picks lower, a downgrade budget never "
                  "goes lower, and a named model below it is refused (403). " + TIER_HELP)
    classifier_min_confidence = models.FloatField(
        default=0.5, help_text="Below this probability for its best tier the classifier is not trusted and "
                               "`auto` uses the default tier (0 = always trust it).")

    # --- escalation (read by serving/stages/escalate.py and serving/validation.py) -----------------
    escalation_limit = models.PositiveSmallIntegerField(
        default=1, help_text="Extra attempts allowed on a stronger tier when a validator fails (0 = never).")
    validate_json = models.BooleanField(
        default=True, help_text="Escalate when `response_format` asks for JSON and the answer is not valid.")
    logprob_mean_threshold = models.FloatField(
        null=True, blank=True, help_text="Escalate when the answer's mean token log-probability is below this "
                                         "(e.g. -1.5). Empty: not checked.")
    logprob_min_threshold = models.FloatField(
        null=True, blank=True, help_text="Escalate when any token's log-probability is below this (e.g. -6). "
                                         "Empty: not checked.")
    escalate_on_truncation = models.BooleanField(
        default=False, help_text="Escalate when the answer stopped at max_tokens (finish_reason 'length').")
    check_unsafe_content = models.BooleanField(
        default=True, help_text="Escalate when the unsafe-content check flags the answer.")

    # --- token optimization (read by serving/stages/optimize_tokens.py) ---------------------------
    dedupe_system_prompts = models.BooleanField(default=True, help_text="Drop repeated identical system prompts.")
    history_token_budget = models.PositiveIntegerField(
        null=True, blank=True, help_text="Trim conversation history to this many tokens (older turns become a "
                                         "summary). Empty: no trimming.")
    context_token_budget = models.PositiveIntegerField(
        null=True, blank=True, help_text="Keep only the context chunks most relevant to the last user message "
                                         "within this many tokens. Empty: keep all context.")
    compact_tool_output = models.BooleanField(
        default=True, help_text="Minify tool outputs (JSON without whitespace and nulls, long fields cut).")
    max_tokens_cap = models.PositiveIntegerField(
        null=True, blank=True, help_text="Upper bound on a request's max_tokens. Empty: the gateway's limit.")

    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "routing policy"
        verbose_name_plural = "routing policies"
        ordering = ["organization", "feature"]
        constraints = [
            models.UniqueConstraint(fields=["organization"], condition=Q(feature__isnull=True),
                                    name="one_routing_policy_per_org"),
            models.UniqueConstraint(fields=["organization", "feature"], condition=Q(feature__isnull=False),
                                    name="one_routing_policy_per_feature"),
            models.CheckConstraint(condition=Q(min_tier__gte=1) & Q(default_tier__gte=1),
                                   name="routing_tiers_start_at_one"),
        ]

    def __str__(self) -> str:
        scope = f"{self.organization} / {self.feature.slug}" if self.feature_id else f"{self.organization}"
        return f"routing policy for {scope}"

    def clean(self):
        from django.core.exceptions import ValidationError

        if self.feature_id and self.feature.organization_id != self.organization_id:
            raise ValidationError({"feature": "The feature belongs to another organization."})
        if not 0 <= self.classifier_min_confidence <= 1:
            raise ValidationError({"classifier_min_confidence": "A probability: between 0 and 1."})
