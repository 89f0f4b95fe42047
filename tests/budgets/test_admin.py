"""Admins manage budgets and alerts in Django admin; the list shows this period's spend, share and forecast."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from budgets import alerts as budget_alerts
from budgets.models import Alert, Budget
from metering.services import UsageDraft, record_usage

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.force_login(admin)
    return client


def _spend(tenant, amount):
    record_usage(UsageDraft(request_id="seed", org_id=tenant.org.pk, created_at=timezone.now() - timedelta(minutes=5),
                            model_requested="tollgate-mini", feature="chat", cost_input=amount))


def test_budget_list_shows_spend_share_and_forecast_and_filters_by_org_and_state(staff_client, make_tenant,
                                                                                   catalog):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    Budget.objects.create(organization=acme.org, amount=Decimal("4.00"))
    Budget.objects.create(organization=globex.org, amount=Decimal("9.00"), is_active=False)
    _spend(acme, Decimal("1.00"))

    html = staff_client.get("/admin/budgets/budget/").content.decode()
    assert "$1.00" in html and "25%" in html  # spent and share used
    assert "forecast" in html.lower()
    acme_only = staff_client.get(f"/admin/budgets/budget/?organization__id__exact={acme.org.pk}").content.decode()
    assert "$4.00" in acme_only and "$9.00" not in acme_only
    paused = staff_client.get("/admin/budgets/budget/?state=paused").content.decode()
    assert "$9.00" in paused and "$4.00" not in paused


def test_bulk_reset_and_pause(staff_client, tenant):
    first = Budget.objects.create(organization=tenant.org, amount=Decimal("1"))
    second = Budget.objects.create(organization=tenant.org, feature=tenant.features["chat"], amount=Decimal("1"))
    ids = [first.pk, second.pk]
    staff_client.post("/admin/budgets/budget/", {"action": "reset_selected", "_selected_action": ids})
    assert all(b.reset_at is not None for b in Budget.objects.all())
    staff_client.post("/admin/budgets/budget/", {"action": "pause_selected", "_selected_action": ids})
    assert not Budget.objects.filter(is_active=True).exists()


def test_budgets_are_inline_on_the_organization_page(staff_client, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("12.5"))
    html = staff_client.get(f"/admin/tenants/organization/{tenant.org.pk}/change/").content.decode()
    assert "budgets-TOTAL_FORMS" in html and "12.5" in html


def test_alerts_are_listed_and_acknowledged_in_admin(staff_client, tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("10"))
    now = timezone.now()
    alert = budget_alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 80, now, now + timedelta(days=1),
                                      spent=Decimal("8"))
    assert "80% of $10 reached" in staff_client.get("/admin/budgets/alert/").content.decode()
    staff_client.post("/admin/budgets/alert/", {"action": "acknowledge_selected", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.acknowledged_at is not None and alert.acknowledged_by.username == "root"


def test_a_budget_names_at_most_one_narrow_scope(tenant):
    from django.core.exceptions import ValidationError

    budget = Budget(organization=tenant.org, feature=tenant.features["chat"], api_key=tenant.key, amount=1)
    with pytest.raises(ValidationError):
        budget.full_clean()


def test_admin_budget_and_alert_pages_render(staff_client, tenant):
    assert staff_client.get("/admin/budgets/budget/add/").status_code == 200
    budget = Budget.objects.create(organization=tenant.org, api_key=tenant.key, amount=Decimal("3"),
                                   action=Budget.Action.DOWNGRADE)
    assert staff_client.get(f"/admin/budgets/budget/{budget.pk}/change/").status_code == 200
    now = timezone.now()
    alert = budget_alerts.raise_alert(budget, Alert.Kind.FORECAST, 100, now, now + timedelta(days=1),
                                      spent=Decimal("1"), forecast=Decimal("4.5"))
    page = staff_client.get(f"/admin/budgets/alert/{alert.pk}/change/").content.decode()
    assert "forecast to exceed" in page
