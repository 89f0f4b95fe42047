"""Routing policies are set in Django admin: the list shows each policy's scope and limits, the form groups
routing, escalation and token-optimization settings, and a saved change applies to the next request."""

import pytest

from routing import services
from routing.models import RoutingPolicy

pytestmark = pytest.mark.django_db


def test_admin_lists_policies_and_a_saved_change_applies_at_once(client, django_user_model, tenant, catalog):
    admin = django_user_model.objects.create_superuser("root", password="pw-for-tests")
    client.force_login(admin)
    assert services.policy_for(tenant.org.pk, None) == services.DEFAULT_POLICY

    form = client.get("/admin/routing/routingpolicy/add/").content.decode()
    for heading in ("Routing", "Escalation", "Token optimization"):
        assert f">{heading}<" in form
    response = client.post("/admin/routing/routingpolicy/add/", {
        "organization": tenant.org.pk, "feature": "", "allowed_models": [catalog["tollgate-small"].pk],
        "default_tier": 2, "min_tier": 2, "classifier_min_confidence": 0.5, "escalation_limit": 1,
        "validate_json": "on", "check_unsafe_content": "on", "dedupe_system_prompts": "on",
        "compact_tool_output": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    policy = services.policy_for(tenant.org.pk, None)
    assert (policy.min_tier, policy.allowed_models) == (2, frozenset({"tollgate-small"}))

    listing = client.get("/admin/routing/routingpolicy/").content.decode()
    assert "whole organization" in listing and "tollgate-small" in listing


def test_a_feature_of_another_org_is_refused(make_tenant, catalog):
    acme, other = make_tenant("acme"), make_tenant("other")
    policy = RoutingPolicy(organization=acme.org, feature=other.features["chat"])
    with pytest.raises(Exception) as err:
        policy.full_clean()
    assert "another organization" in str(err.value)
