"""Admin: the pools admin lists the pools the dashboards show, the budget form shows this period's spend
and takes thresholds as checkboxes, and money reads $50.00, never 50.000000000."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from budgets.models import Budget
from metering.models import PoolRate
from metering.shipping import ship_pending_usage
from serving.models import Deployment, Pool
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests"))
    return client


def test_pools_admin_lists_the_in_process_and_billed_pools_that_have_no_row(staff_client, tenant, clickhouse):
    now = timezone.now()
    record_attempt(tenant.org, now - timedelta(hours=2), pool="interactive", engine_seconds=1.0)
    record_attempt(tenant.org, now - timedelta(hours=2), pool="in-process", engine_seconds=1.0)
    PoolRate.objects.create(pool="batch", effective_from=now - timedelta(days=1), usd_per_gpu_hour=Decimal("2.5"),
                            gpus=4)
    configured = Pool.objects.create(name="gpu-a100", kind=Pool.Kind.BATCH)
    Deployment.objects.create(model="tollgate-large", pool=configured)
    ship_pending_usage()

    html = staff_client.get("/admin/serving/pool/").content.decode()
    section = re.search(r'data-testid="pools-without-rows">(.*?)</table>', html, re.S).group(1)
    listed = set(re.findall(r'<tr data-pool="([^"]+)">', section))
    assert listed == {"interactive", "embedding", "in-process", "batch"}
    assert "gpu-a100" not in listed and "gpu-a100" in html  # a real row stays in the normal list
    interactive = re.search(r'<tr data-pool="interactive">(.*?)</tr>', section).group(1)
    assert "in-process default" in interactive and "<td>256</td>" in interactive  # TOLLGATE_POOL_MAX_QUEUE


def test_budget_form_shows_spend_and_takes_thresholds_as_checkboxes(staff_client, tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("50"), thresholds="50,80,100")
    record_attempt(tenant.org, timezone.now() - timedelta(minutes=5), input_tokens=2_000_000)  # $0.20 at mini prices

    html = staff_client.get(f"/admin/budgets/budget/{budget.pk}/change/").content.decode()
    assert 'value="50.00"' in html and "50.000000000" not in html
    assert re.search(r'Spent this period:</label>\s*<div class="readonly">\$0\.20</div>', html)
    for percent in (50, 80, 100):
        assert re.search(rf'type="checkbox" name="thresholds" value="{percent}"[^>]*checked', html), percent
    assert not re.search(r'type="checkbox" name="thresholds" value="25"[^>]*checked', html)

    form = {"organization": tenant.org.pk, "amount": "75.5", "period": "monthly", "is_active": "on",
            "action": "block", "downgrade_at_percent": "100", "thresholds": ["25", "90"]}
    response = staff_client.post(f"/admin/budgets/budget/{budget.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    budget.refresh_from_db()
    assert budget.thresholds == "25,90" and budget.amount == Decimal("75.5")

    form["thresholds"] = []
    response = staff_client.post(f"/admin/budgets/budget/{budget.pk}/change/", form)
    assert response.status_code == 200
    assert "Choose at least one percentage" in response.content.decode()
    form["amount"] = "fifty"
    assert "Enter a number" in staff_client.post(f"/admin/budgets/budget/{budget.pk}/change/", form).content.decode()


def test_money_in_admin_lists_reads_as_dollars(staff_client, tenant, clickhouse):
    Budget.objects.create(organization=tenant.org, amount=Decimal("50"))
    PoolRate.objects.create(pool="batch", effective_from=timezone.now(), usd_per_gpu_hour=Decimal("2.5"), gpus=4)
    record_attempt(tenant.org, timezone.now() - timedelta(minutes=5), input_tokens=120, output_tokens=30)
    for url, expected in (("/admin/budgets/budget/", "$50.00"), ("/admin/metering/poolrate/", "$2.50"),
                          ("/admin/metering/usagerecord/", "$0.000024")):
        html = staff_client.get(url).content.decode()
        assert expected in html, url
        assert not re.search(r">\s*\d+\.\d{9}\s*<", html), url  # no raw nine-decimal amounts
