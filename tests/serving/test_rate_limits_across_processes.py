"""Rate limits hold across web processes: two live gateways sharing Redis count one key's requests together."""

import openai
import pytest
import redis
from django.conf import settings

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def fresh_counters():
    client = redis.Redis.from_url(settings.TOLLGATE_RATE_LIMIT_REDIS_URL)
    for key in client.scan_iter("tollgate:ratelimit:*"):
        client.delete(key)


def test_two_gateways_share_one_keys_requests_per_minute(live_gateway, second_gateway, tenant):
    assert settings.TOLLGATE_RATE_LIMIT_REDIS_URL  # the real Redis, as in production
    tenant.key.requests_per_minute = 3
    tenant.key.save()
    here, there = (openai.OpenAI(base_url=gateway.v1, api_key=tenant.plaintext, max_retries=0, timeout=60)
                   for gateway in (live_gateway, second_gateway))

    def chat(client):
        return client.chat.completions.with_raw_response.create(model="tollgate-mini", messages=MESSAGES,
                                                                max_tokens=1)

    assert chat(here).headers["x-ratelimit-remaining-requests"] == "2"
    assert chat(there).headers["x-ratelimit-remaining-requests"] == "1"
    assert chat(here).headers["x-ratelimit-remaining-requests"] == "0"
    for client in (there, here):
        with pytest.raises(openai.RateLimitError) as err:
            chat(client)
        assert err.value.code == "rate_limit_exceeded" and "retry-after" in err.value.response.headers
