from django.core.management.base import BaseCommand, CommandError

from tenants.models import Feature, Organization

from ...services import purge


class Command(BaseCommand):
    help = "Purge an org's (or one feature's) cached answers and embeddings, in every web process at once."

    def add_arguments(self, parser):
        parser.add_argument("org", help="organization slug")
        parser.add_argument("--feature", help="only this feature's entries")

    def handle(self, *args, org, feature=None, **options):
        organization = Organization.objects.filter(slug=org).first()
        if organization is None:
            raise CommandError(f"No organization {org!r}.")
        if feature is not None and not Feature.objects.filter(organization=organization, slug=feature).exists():
            raise CommandError(f"{org} has no feature {feature!r}.")
        purged = purge(organization.pk, feature)
        self.stdout.write(f"Purged {org}{'/' + feature if feature else ''}: "
                          f"{purged.semantic_entries} semantic entries deleted; exact and embedding entries "
                          f"unreachable from now on.")
