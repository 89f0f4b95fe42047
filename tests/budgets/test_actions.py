"""What each action does when a budget is used up, and which requests a budget covers."""

from decimal import Decimal

import openai
import pytest

from budgets.models import Alert, Budget
from metering.models import UsageRecord
from tenants.services import issue_api_key

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello"}]


def ask(client, max_tokens=2):
    return client.chat.completions.with_raw_response.create(model="tollgate-mini", messages=MESSAGES,
                                                            max_tokens=max_tokens)


def test_block_refuses_a_request_whose_worst_case_no_longer_fits(openai_client, tenant):
    served = ask(openai_client).parse()
    spent = UsageRecord.objects.get().cost_total
    # Room left for a 1-token answer, but not for the 500 tokens this request may produce.
    Budget.objects.create(organization=tenant.org, amount=spent * 3, action=Budget.Action.BLOCK)
    with pytest.raises(openai.RateLimitError) as err:
        ask(openai_client, max_tokens=500)
    assert err.value.code == "budget_exceeded"
    assert "acme" in err.value.message and "resets at" in err.value.message
    assert served.usage.completion_tokens >= 1
    assert ask(openai_client, max_tokens=1).http_response.status_code == 200  # a small one still fits
    refusal = UsageRecord.objects.get(status=UsageRecord.Status.REFUSED)
    assert refusal.cost_total == 0 and refusal.error_code == "budget_exceeded"
    # A block budget that refuses has reached its 100% line: one alert says so.
    full = Alert.objects.get(kind=Alert.Kind.THRESHOLD, threshold_percent=100)
    assert full.spent < full.amount  # raised by the refusal, before settled spend reached the amount


def test_notify_only_notifies(openai_client, tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("0.000000001"),
                                   action=Budget.Action.NOTIFY)
    for _ in range(3):
        raw = ask(openai_client)
        assert raw.http_response.status_code == 200
        assert "x-tollgate-downgraded" not in raw.headers
        assert raw.parse().model == "tollgate-mini"
    assert not UsageRecord.objects.filter(status=UsageRecord.Status.REFUSED).exists()
    assert not UsageRecord.objects.filter(downgraded=True).exists()
    assert sorted(Alert.objects.filter(budget=budget, kind=Alert.Kind.THRESHOLD)
                  .values_list("threshold_percent", flat=True)) == [50, 80, 100]


def test_api_key_budget_covers_only_that_key(live_gateway, tenant):
    other = issue_api_key(tenant.org, "second key", default_feature=tenant.features["chat"])
    Budget.objects.create(organization=tenant.org, api_key=tenant.key, amount=Decimal("0"))
    blocked = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0)
    allowed = openai.OpenAI(base_url=live_gateway.v1, api_key=other.plaintext, max_retries=0)
    assert ask(allowed).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as err:
        ask(blocked)
    assert "key acme key" in err.value.message


def test_user_budget_covers_every_key_of_that_user(live_gateway, tenant, django_user_model):
    alice = django_user_model.objects.create_user("alice")
    alices_key = issue_api_key(tenant.org, "alice's key", default_feature=tenant.features["chat"], user=alice)
    Budget.objects.create(organization=tenant.org, user=alice, amount=Decimal("0"))
    with pytest.raises(openai.RateLimitError) as err:
        ask(openai.OpenAI(base_url=live_gateway.v1, api_key=alices_key.plaintext, max_retries=0))
    assert "user alice" in err.value.message
    shared = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0)  # no user
    assert ask(shared).http_response.status_code == 200


def test_every_covering_budget_is_checked(live_gateway, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("100"))  # the org has plenty
    Budget.objects.create(organization=tenant.org, feature=tenant.features["chat"], amount=Decimal("0"))
    client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        ask(client)
    assert "acme/chat" in err.value.message


def test_a_paused_budget_is_not_enforced(openai_client, tenant):
    Budget.objects.create(organization=tenant.org, amount=Decimal("0"), is_active=False)
    assert ask(openai_client).http_response.status_code == 200
