"""Retrain the tier classifier on the prompt set's train split and report held-out accuracy."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from routing import classifier, dataset


class Command(BaseCommand):
    help = ("Train the routing classifier on the train split of routing/data/prompts.jsonl, print accuracy on "
            "the held-out split (per tier and overall) and save it.")

    def add_arguments(self, parser):
        parser.add_argument("--embed-tokens", type=int, default=classifier.DEFAULT_EMBED_TOKENS,
                            help="Tokens of the last user turn to embed (head and tail).")
        parser.add_argument("--output", type=Path, default=classifier.CLASSIFIER_PATH)
        parser.add_argument("--min-accuracy", type=float, default=0.0,
                            help="Fail (and save nothing) below this held-out accuracy.")
        parser.add_argument("--dry-run", action="store_true", help="Measure only; save nothing.")

    def handle(self, *args, embed_tokens, output, min_accuracy, dry_run, **options):
        records = dataset.load_prompt_set()
        train, held_out = classifier.split(records)
        self.stdout.write(f"{len(records)} prompts: {len(train)} to train on, {len(held_out)} held out "
                          f"({len({r['template'] for r in held_out})} templates training never sees)")
        model, report = classifier.train_on_prompt_set(embed_tokens, update_cache=not dry_run)
        self.stdout.write(f"{'tier':>6} {'right':>6} {'total':>6} {'accuracy':>9}")
        for tier, (right, total) in report["per_tier"].items():
            self.stdout.write(f"{tier:>6} {right:>6} {total:>6} {right / total:>9.3f}")
        self.stdout.write(f"{'all':>6} {'':>6} {len(held_out):>6} {report['overall']:>9.3f}")
        if report["overall"] < min_accuracy:
            raise CommandError(f"held-out accuracy {report['overall']:.3f} is below {min_accuracy}")
        if not dry_run:
            classifier.save(model, output, held_out_accuracy=round(report["overall"], 4),
                            trained_on=len(train), prompt_set_seed=dataset.SEED)
            classifier.forget_classifier()
            self.stdout.write(f"saved {output}")
