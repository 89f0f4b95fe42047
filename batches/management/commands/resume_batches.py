from django.core.management.base import BaseCommand

from batches import services


class Command(BaseCommand):
    help = ("Run every unfinished batch on (after a restart of the process that ran it): finished lines are "
            "skipped and no line is billed twice.")

    def handle(self, *args, **options):
        for batch_id in services.unfinished_batches():
            batch = services.run_batch(batch_id)
            self.stdout.write(f"{batch.pk}: {batch.status} ({batch.request_completed} completed, "
                              f"{batch.request_failed} failed of {batch.request_total})")
