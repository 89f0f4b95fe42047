"""Bad input gets an OpenAI-shaped error with the right status, and nothing is billed."""

import datetime
from decimal import Decimal

import httpx
import openai
import pytest
from django.utils import timezone

from budgets.models import Budget
from metering.models import UsageRecord
from tenants.models import ApiKey

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hello"}]


def assert_openai_error_shape(body: dict, code: str | None):
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["code"] == code


def billed_rows():
    return UsageRecord.objects.exclude(cost_total=0).count()


def test_wrong_key_is_refused_and_not_billed(live_gateway, tenant):
    client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext[:-4] + "XXXX", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="tollgate-mini", messages=MESSAGES)
    assert err.value.status_code == 401
    assert_openai_error_shape(err.value.response.json(), "invalid_api_key")
    assert tenant.plaintext[-20:] not in err.value.message  # never echo a secret
    assert UsageRecord.objects.count() == 0


def test_missing_key_is_refused(live_gateway, tenant):
    response = httpx.post(f"{live_gateway.v1}/chat/completions", json={"model": "tollgate-mini", "messages": MESSAGES})
    assert response.status_code == 401
    assert_openai_error_shape(response.json(), "invalid_api_key")


def test_revoked_key_is_refused_and_not_billed(openai_client, tenant):
    ApiKey.objects.filter(pk=tenant.key.pk).update(revoked_at=timezone.now())
    with pytest.raises(openai.AuthenticationError) as err:
        openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES)
    assert "revoked" in err.value.message
    assert UsageRecord.objects.count() == 0


def test_expired_key_is_refused(openai_client, tenant):
    ApiKey.objects.filter(pk=tenant.key.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as err:
        openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES)
    assert "expired" in err.value.message


def test_unknown_model_is_404_and_not_billed(openai_client):
    with pytest.raises(openai.NotFoundError) as err:
        openai_client.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert err.value.status_code == 404
    assert_openai_error_shape(err.value.response.json(), "model_not_found")
    assert err.value.body["param"] == "model"
    assert UsageRecord.objects.count() == 0


def test_malformed_json_is_400_and_not_billed(live_gateway, tenant):
    response = httpx.post(
        f"{live_gateway.v1}/chat/completions", content=b'{"model": "tollgate-mini", "messages": [',
        headers={"Authorization": f"Bearer {tenant.plaintext}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert_openai_error_shape(response.json(), "invalid_json")
    assert response.headers["x-request-id"]
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "tollgate-mini"}, "messages"),
        ({"model": "tollgate-mini", "messages": [{"role": "wizard", "content": "x"}]}, "messages.[0].role"),
        ({"model": "tollgate-mini", "messages": MESSAGES, "temperature": 7}, "temperature"),
        ({"model": "tollgate-mini", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": "tollgate-mini", "messages": MESSAGES, "n": 3}, "n"),
    ],
)
def test_invalid_parameters_name_the_parameter(openai_client, body, param):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.post("/chat/completions", body=body, cast_to=httpx.Response)
    assert err.value.body["param"] == param
    assert UsageRecord.objects.count() == 0


def test_prompt_longer_than_the_context_window_is_400(openai_client):
    long_prompt = "tollgate " * 3000
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model="tollgate-mini", messages=[{"role": "user", "content": long_prompt}])
    assert err.value.code == "context_length_exceeded"
    assert UsageRecord.objects.count() == 0


def test_oversized_body_is_413(live_gateway, tenant, settings):
    body = b'{"model": "tollgate-mini", "messages": [{"role": "user", "content": "' + b"a" * 1_100_000 + b'"}]}'
    response = httpx.post(f"{live_gateway.v1}/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {tenant.plaintext}"})
    assert response.status_code == 413
    assert_openai_error_shape(response.json(), "request_too_large")


def test_unknown_feature_header_is_400(live_gateway, tenant, make_tenant):
    make_tenant("globex", features=("secret-project",))
    client = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0,
                           default_headers={"X-Feature": "secret-project"})  # another org's feature
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tollgate-mini", messages=MESSAGES)
    assert err.value.code == "unknown_feature"


def test_exhausted_budget_is_429_budget_exceeded_recorded_and_not_billed(openai_client, tenant):
    openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=4)
    spent = UsageRecord.objects.get().cost_total
    Budget.objects.create(organization=tenant.org, amount=Decimal("0.00"))

    with pytest.raises(openai.RateLimitError) as err:
        openai_client.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=4)
    assert err.value.status_code == 429
    assert_openai_error_shape(err.value.response.json(), "budget_exceeded")
    assert "acme" in err.value.message and "resets" in err.value.message
    assert int(err.value.response.headers["retry-after"]) > 0

    refusal = UsageRecord.objects.get(status=UsageRecord.Status.REFUSED)
    assert refusal.error_code == "budget_exceeded"
    assert refusal.cost_total == 0 and refusal.output_tokens == 0
    assert UsageRecord.objects.exclude(status=UsageRecord.Status.REFUSED).get().cost_total == spent


def test_feature_budget_covers_only_that_feature(live_gateway, tenant):
    Budget.objects.create(organization=tenant.org, feature=tenant.features["search"], amount=Decimal("0"))
    default = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0)
    default.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=2)  # "chat": allowed
    search = openai.OpenAI(base_url=live_gateway.v1, api_key=tenant.plaintext, max_retries=0,
                           default_headers={"X-Feature": "search"})
    with pytest.raises(openai.RateLimitError):
        search.chat.completions.create(model="tollgate-mini", messages=MESSAGES, max_tokens=2)


def test_unknown_v1_route_and_wrong_method_are_openai_shaped(live_gateway, tenant):
    headers = {"Authorization": f"Bearer {tenant.plaintext}"}
    missing = httpx.get(f"{live_gateway.v1}/no/such/thing", headers=headers)
    assert missing.status_code == 404
    assert_openai_error_shape(missing.json(), "not_found")
    wrong = httpx.get(f"{live_gateway.v1}/chat/completions", headers=headers)
    assert wrong.status_code == 405
    assert_openai_error_shape(wrong.json(), "method_not_allowed")
