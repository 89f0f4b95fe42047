from django.core.management.base import BaseCommand

from budgets.services import rebuild_counters


class Command(BaseCommand):
    help = "Recompute the current period's budget counters from the usage ledger (after losing or doubting them)."

    def add_arguments(self, parser):
        parser.add_argument("--budget", type=int, action="append", help="Only this budget id (repeatable).")

    def handle(self, *args, budget=None, **options):
        for counter in rebuild_counters(budget_ids=budget):
            self.stdout.write(f"budget {counter.budget_id} from {counter.window_start:%Y-%m-%d %H:%M}: "
                              f"spent {counter.spent}, reserved {counter.reserved}")
