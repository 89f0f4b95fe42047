"""Write the router's labelled prompt set (routing/data/prompts.jsonl) from routing/dataset.py."""

from pathlib import Path

from django.core.management.base import BaseCommand

from routing import dataset


class Command(BaseCommand):
    help = "Regenerate the router's labelled prompt set from its templates (same seed, same file)."

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=dataset.SEED)
        parser.add_argument("--per-template", type=int, default=dataset.PER_TEMPLATE)
        parser.add_argument("--output", type=Path, default=dataset.PROMPTS_PATH)

    def handle(self, *args, seed, per_template, output, **options):
        count = dataset.write_prompt_set(output, seed, per_template)
        self.stdout.write(f"wrote {count} prompts to {output}")
