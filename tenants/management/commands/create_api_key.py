from django.core.management.base import BaseCommand, CommandError

from tenants.models import Feature, Organization
from tenants.services import issue_api_key


class Command(BaseCommand):
    help = "Create an API key for an organization and print it once (for scripts)."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--feature", help="default feature slug (must belong to the org)")
        parser.add_argument("--name", default="cli key", help="a name to recognise the key by")

    def handle(self, *args, org, feature, name, **options):
        try:
            organization = Organization.objects.get(slug=org)
        except Organization.DoesNotExist:
            raise CommandError(f"No organization with slug {org!r}.")
        default_feature = None
        if feature:
            try:
                default_feature = Feature.objects.get(organization=organization, slug=feature)
            except Feature.DoesNotExist:
                raise CommandError(f"Organization {org!r} has no feature {feature!r}.")
        issued = issue_api_key(organization, name, default_feature=default_feature)
        # Only the key on stdout, so `KEY=$(manage.py create_api_key ...)` works.
        self.stdout.write(issued.plaintext)
