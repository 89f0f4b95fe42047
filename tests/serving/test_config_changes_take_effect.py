"""The gateway memoizes keys, prices and budgets per process (core/memo.py); changes made here apply at once.

Each test first serves a request, so the memo holds the old value, then
changes it the way an admin or a service would, and checks the very next
request sees the change.
"""

from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from budgets.models import Budget
from metering.models import CatalogModel, Price, UsageRecord
from tenants.models import ApiKey
from tenants.services import revoke_api_key

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello"}]


def ask(client, **kwargs):
    return client.chat.completions.with_raw_response.create(model="tollgate-mini", messages=MESSAGES, max_tokens=3,
                                                           temperature=0, **kwargs)


def test_a_revoked_key_stops_working_on_the_next_request(openai_client, tenant):
    ask(openai_client).parse()  # the key is memoized now
    revoke_api_key(tenant.key)
    with pytest.raises(openai.AuthenticationError) as err:
        ask(openai_client)
    assert "revoked" in err.value.message
    assert UsageRecord.objects.count() == 1


def test_revoking_in_the_admin_stops_the_key_at_once(openai_client, tenant, admin_client):
    ask(openai_client).parse()
    response = admin_client.post("/admin/tenants/apikey/", {"action": "revoke_selected",
                                                            "_selected_action": [tenant.key.pk]})
    assert response.status_code == 302
    assert ApiKey.objects.get(pk=tenant.key.pk).revoked_at is not None
    with pytest.raises(openai.AuthenticationError):
        ask(openai_client)


def test_a_new_price_applies_from_its_moment(openai_client, tenant):
    first = ask(openai_client)
    old_cost = Decimal(first.headers["x-tollgate-cost"])
    assert old_cost > 0
    model = CatalogModel.objects.get(name="tollgate-mini")
    new_price = Price.objects.create(model=model, effective_from=timezone.now() - timedelta(seconds=1),
                                     input_per_mtok=Decimal("100"), cached_input_per_mtok=Decimal("10"),
                                     output_per_mtok=Decimal("400"))
    second = ask(openai_client)
    usage = second.parse().usage
    expected = (Decimal(usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens) * Decimal("100")
                + Decimal(usage.prompt_tokens_details.cached_tokens) * Decimal("10")
                + Decimal(usage.completion_tokens) * Decimal("400")) / Decimal(1_000_000)
    assert Decimal(second.headers["x-tollgate-cost"]) == expected
    assert UsageRecord.objects.get(request_id=second.headers["x-request-id"]).price_id == new_price.pk


def test_a_lowered_budget_refuses_the_next_request(openai_client, tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("100"))
    ask(openai_client).parse()  # budgets and their counter are memoized now
    budget.amount = Decimal("0.000000001")
    budget.save()
    with pytest.raises(openai.RateLimitError) as err:
        ask(openai_client)
    assert err.value.code == "budget_exceeded"


def test_a_paused_budget_stops_refusing_at_once(openai_client, tenant):
    from budgets.services import pause_budgets

    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("0.000000001"))
    with pytest.raises(openai.RateLimitError):
        ask(openai_client)
    pause_budgets([budget.pk])
    assert ask(openai_client).parse().usage.completion_tokens > 0
