"""`"validation": {"regex": null}` (or `"json_schema": null`) means "no such check", like any optional
field set to null: it is served, not a 500 (found by the /v1 fuzz)."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("validation", [{"regex": None}, {"json_schema": None}, {"regex": None, "json_schema": None}])
def test_a_null_validation_field_is_served_not_a_500(openai_client, validation):
    completion = openai_client.chat.completions.create(
        model="tollgate-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        extra_body={"validation": validation})
    assert completion.choices[0].message is not None
