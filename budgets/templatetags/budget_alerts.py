from django import template

from budgets.models import Alert

register = template.Library()


@register.simple_tag
def recent_budget_alerts(org, limit: int = 20):
    """The org's latest alerts, unacknowledged first (dashboards/_alerts.html)."""
    return list(
        Alert.objects.filter(budget__organization=org)
        .select_related("budget__organization", "budget__feature", "budget__api_key", "budget__user",
                        "acknowledged_by")
        .prefetch_related("deliveries")
        .order_by("acknowledged_at", "-created_at")[:limit]
    )
