from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from tenants.models import Organization
from tenants.services import can_view_organization

from .alerts import acknowledge_alerts
from .models import Alert


@login_required
@require_POST
def acknowledge_alert(request, org_slug: str, alert_id: int):
    """A manager (or staff) marks one of their org's alerts as seen. Budgets themselves stay read-only."""
    org = get_object_or_404(Organization, slug=org_slug)
    if not can_view_organization(request.user, org):
        raise Http404("No such organization.")
    alert = get_object_or_404(Alert, pk=alert_id, budget__organization=org)
    acknowledge_alerts([alert.pk], request.user)
    return redirect("dashboards:org", org_slug=org.slug)
