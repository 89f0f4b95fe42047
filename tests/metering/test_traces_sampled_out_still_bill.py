"""Trace sampling (the SDK's OTEL_TRACES_SAMPLER) keeps fewer traces and bills every request the same.

Tracing is about a quarter of the gateway's CPU per request (bench/gateway_features.py), so an operator may
keep one trace in ten. Cost attribution reads the ledger, never the spans: a request whose trace was not
kept is billed in full, and its ledger row names no trace id, since no trace store holds one for it (the
request detail page shows none, not an id that leads nowhere).
"""

from decimal import Decimal

import openai
import pytest

from metering.models import UsageRecord
from tests.conftest import gateway_process

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("settings_off", [{"OTEL_TRACES_SAMPLER": "always_off"}, {"OTEL_SDK_DISABLED": "true"}],
                         ids=["sampled-out", "sdk-disabled"])
def test_a_request_whose_trace_is_not_kept_is_billed_and_names_no_trace(live_gateway, tenant, tmp_path,
                                                                         settings_off):
    with gateway_process(tmp_path, **settings_off) as gateway:
        client = openai.OpenAI(base_url=gateway.v1, api_key=tenant.plaintext, max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(
            model="tollgate-mini", messages=[{"role": "user", "content": "bill me, trace me not"}], max_tokens=4)
    completion = raw.parse()
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert record.status == UsageRecord.Status.OK
    assert (record.input_tokens, record.output_tokens) == (completion.usage.prompt_tokens,
                                                           completion.usage.completion_tokens)
    assert record.cost_total > Decimal(0)
    assert record.trace_id == ""


def test_a_kept_trace_is_named_on_its_ledger_row(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "trace me"}], max_tokens=4)
    record = UsageRecord.objects.get(request_id=raw.headers["x-request-id"])
    assert len(record.trace_id) == 32 and record.trace_id != "0" * 32
