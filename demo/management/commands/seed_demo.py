"""Seed a demo: admin, two orgs with features, managers, keys, budgets, catalog and usage history.

Idempotent: a second run finds what the first made and only prints the logins again.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from autoscaling.models import PoolScaling
from budgets.models import Budget
from metering.costs import charge_for_attempt
from metering.models import CatalogModel, ChargebackMode, Price, UsageRecord
from metering.pricing import catalog_entry, cost_of_tokens
from tenants.models import ApiKey, Feature, Membership, Organization
from tenants.services import issue_api_key

CATALOG = [
    # name, tier, description, input, cached input, output (USD per 1M tokens)
    ("tollgate-mini", 1, "Smallest and cheapest: classification, extraction, short answers",
     "0.10", "0.01", "0.40"),
    ("tollgate-small", 2, "Summaries and everyday chat", "0.50", "0.05", "1.50"),
    ("tollgate-large", 3, "Hard reasoning; use when the smaller models fail", "3.00", "0.30", "15.00"),
    ("all-minilm-l6-v2", 1, "Sentence embeddings (384 dimensions) for /v1/embeddings", "0.02", "0.02", "0"),
]
ORGS = [
    ("acme", "Acme Corp", "America/New_York", ["support-bot", "doc-summarizer", "code-review"], "alice"),
    ("globex", "Globex", "Europe/Berlin", ["search", "chat-assistant"], "bob"),
]
DEMO_PASSWORD = "tollgate-demo"
HISTORY_REQUESTS = 400
HISTORY_DAYS = 30


class Command(BaseCommand):
    help = "Create demo data for the embedded default (safe to run repeatedly)."

    def handle(self, *args, **options):
        with transaction.atomic():
            admin = self._admin()
            self._catalog()
            orgs = [self._org(*spec) for spec in ORGS]
            self._budgets()
            self._autoscaling()
        keys = self._keys(orgs)
        history = self._history(orgs)
        port = settings.PORT
        self.stdout.write(self.style.SUCCESS("\nTollgate demo is ready."))
        if history:
            self.stdout.write(f"  Seeded {history} demo requests over the last {HISTORY_DAYS} days.")
        lines = [("Admin login", f"{admin.username} / {DEMO_PASSWORD}  (http://127.0.0.1:{port}/admin/)")]
        lines += [(f"Manager of {slug}", f"{manager} / {DEMO_PASSWORD}") for slug, _, _, _, manager in ORGS]
        lines.append(("Dashboards", f"http://127.0.0.1:{port}/dashboards/"))
        lines += [(f"API key ({slug})", plaintext) for slug, plaintext in keys.items()]
        for label, value in lines:
            self.stdout.write(f"  {label + ':':20} {value}")
        self.stdout.write(
            f"  Try it:  curl http://127.0.0.1:{port}/v1/chat/completions -H 'Authorization: Bearer "
            f"{keys[ORGS[0][0]]}' -H 'Content-Type: application/json' "
            "-d '{\"model\": \"tollgate-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'\n"
        )

    def _admin(self):
        User = get_user_model()
        admin, created = User.objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.com"}
        )
        if created:
            admin.set_password(DEMO_PASSWORD)
            admin.save()
        return admin

    def _catalog(self):
        since = timezone.now() - timedelta(days=HISTORY_DAYS + 60)
        for name, tier, description, price_in, price_cached, price_out in CATALOG:
            model, _ = CatalogModel.objects.get_or_create(
                name=name, defaults={"tier": tier, "description": description, "context_window": 2048}
            )
            if not model.prices.exists():
                Price.objects.create(model=model, effective_from=since, input_per_mtok=Decimal(price_in),
                                     cached_input_per_mtok=Decimal(price_cached), output_per_mtok=Decimal(price_out))

    def _org(self, slug, name, tz, features, manager_name):
        org, _ = Organization.objects.get_or_create(slug=slug, defaults={"name": name, "timezone": tz})
        for feature in features:
            Feature.objects.get_or_create(organization=org, slug=feature,
                                          defaults={"name": feature.replace("-", " ").title()})
        User = get_user_model()
        manager, created = User.objects.get_or_create(username=manager_name,
                                                      defaults={"email": f"{manager_name}@{slug}.example"})
        if created:
            manager.set_password(DEMO_PASSWORD)
            manager.save()
        Membership.objects.get_or_create(user=manager, organization=org,
                                         defaults={"role": Membership.Role.MANAGER})
        return org

    def _budgets(self):
        acme = Organization.objects.get(slug="acme")
        Budget.objects.get_or_create(organization=acme, feature=None, defaults={"amount": Decimal("50.00")})
        globex_search = Feature.objects.get(organization__slug="globex", slug="search")
        Budget.objects.get_or_create(organization=globex_search.organization, feature=globex_search,
                                     defaults={"amount": Decimal("5.00")})

    def _autoscaling(self):
        # The embedded default has one in-process replica and nothing to scale; the policy makes the GPU page
        # show the signals and what the recommender would ask a cluster for under the demo's load.
        PoolScaling.objects.get_or_create(pool="interactive", defaults={
            "min_replicas": 1, "max_replicas": 4, "ttft_p95_slo_s": 2.0, "warmup_s": 60, "scale_down_cooldown_s": 300})

    def _keys(self, orgs) -> dict[str, str]:
        """One demo key per org. Plaintexts live only in VAR_DIR so re-runs can print them again."""
        path = settings.VAR_DIR / "demo_api_keys.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        known = json.loads(path.read_text()) if path.exists() else {}
        keys = {}
        for org in orgs:
            plaintext = known.get(org.slug)
            prefix_ok = plaintext and ApiKey.objects.filter(
                organization=org, prefix=plaintext[3:15], revoked_at__isnull=True).exists()
            if not prefix_ok:
                feature = org.features.order_by("slug").first()
                plaintext = issue_api_key(org, "demo key", default_feature=feature).plaintext
            keys[org.slug] = plaintext
        path.write_text(json.dumps(keys, indent=2))
        path.chmod(0o600)
        return keys

    def _history(self, orgs) -> int:
        """A month of synthetic traffic so the dashboards have something to show on first run."""
        if UsageRecord.objects.filter(request_id__startswith="demo-").exists():
            return 0
        rng = random.Random(42)
        now = timezone.now()
        entries = {name: catalog_entry(name, now - timedelta(days=HISTORY_DAYS)) for name, *_ in CATALOG}
        model_weights = {"tollgate-mini": 6, "tollgate-small": 3, "tollgate-large": 1}
        rows = []
        for i in range(HISTORY_REQUESTS):
            org = orgs[i % len(orgs)]
            features = list(org.features.values_list("slug", flat=True))
            key = org.api_keys.first()
            model = rng.choices(list(model_weights), weights=list(model_weights.values()))[0]
            entry = entries[model]
            # An hour of margin so every row stays inside a "last 30 days" view for a while.
            created = now - timedelta(seconds=rng.uniform(0, HISTORY_DAYS * 86400 - 3600))
            prompt = rng.randint(20, 1500)
            completion = rng.randint(5, 400)
            cost = cost_of_tokens(entry, input_tokens=prompt, output_tokens=completion)
            # Split the cost as settlement does (all base: answered, kept), so the dashboards'
            # components add up to the bill: a row with cost_total alone has no base cost.
            charge = charge_for_attempt(mode=ChargebackMode.TOKENS, status=UsageRecord.Status.OK, discarded=False,
                                        cost_input=cost.input, cost_output=cost.output, cost_gpu=Decimal(0))
            rows.append(UsageRecord(
                request_id=f"demo-{i:05d}", created_at=created, organization=org, feature=rng.choice(features),
                api_key=key, model_requested=model, model_served=model, pool="in-process",
                input_tokens=prompt, output_tokens=completion, duration_ms=rng.uniform(40, 2500),
                ttft_ms=rng.uniform(5, 120), engine_seconds=rng.uniform(0.02, 1.5),
                cost_input=cost.input, cost_output=cost.output, cost_total=charge.billed, cost_base=charge.base,
                cost_escalation=charge.escalation, chargeback_mode=ChargebackMode.TOKENS, price_id=entry.price_id,
            ))
        UsageRecord.objects.bulk_create(rows, batch_size=500)
        return len(rows)
