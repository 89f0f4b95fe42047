"""The staff GPU page: each rated pool's cost, busy and idle, and who pays it; the lines plus platform
overhead add up to the pool's cost exactly. Managers get a 403."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import ChargebackMode, ChargebackPolicy, PoolRate
from tests.metering.helpers import record_attempt

pytestmark = pytest.mark.django_db(transaction=True)


def test_gpu_page_shows_who_pays_each_pool_and_it_adds_up(client, make_tenant, catalog, django_user_model):
    acme, globex = make_tenant("acme"), make_tenant("globex")
    now = timezone.now()
    PoolRate.objects.create(pool="batch", effective_from=now - timedelta(days=60), usd_per_gpu_hour=Decimal("1.20"),
                            gpus=4)
    ChargebackPolicy.objects.create(organization=acme.org, mode=ChargebackMode.GPU_SHARED)
    record_attempt(acme.org, now - timedelta(days=2), pool="batch", engine_seconds=600.0)
    record_attempt(globex.org, now - timedelta(days=2), pool="batch", engine_seconds=300.0)

    client.force_login(acme.manager)
    assert client.get("/dashboards/staff/gpu/").status_code == 403
    client.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    html = client.get("/dashboards/staff/gpu/?days=7").content.decode()
    section = re.search(r'data-pool="batch">(.*?)</section>', html, re.S).group(1)
    total = Decimal(re.search(r'data-testid="pool-total" data-exact="([^"]+)"', section).group(1))
    charges = [Decimal(v) for v in re.findall(r'<tr data-org="[^"]+">.*?data-exact="([^"]+)"', section)]
    overhead = Decimal(re.search(r'data-testid="platform-overhead" data-exact="([^"]+)"', section).group(1))
    assert len(charges) == 2 and total > 0
    assert sum(charges) + overhead == total
    assert 'id="gpu-batch-data"' in html
    assert client.get("/dashboards/staff/gpu/?feature=chat").status_code == 400


def test_gpu_page_shows_each_replicas_health_and_circuit(client, catalog, django_user_model):
    from serving import pools
    from serving.models import Deployment, Pool, Replica

    deployment = Deployment.objects.create(model="tollgate-small", pool=Pool.objects.create(name="interactive"))
    Replica.objects.create(deployment=deployment, url="http://127.0.0.1:9")  # nothing listens there
    try:
        topology = pools.reload_pools()
        replica = topology.deployments["tollgate-small"].replicas[0]
        for _ in range(replica.breaker.failure_threshold):
            replica.breaker.record_failure()

        client.force_login(django_user_model.objects.create_user("ops", is_staff=True))
        html = client.get("/dashboards/staff/gpu/").content.decode()

        row = re.search(r'<tr data-testid="replica" data-replica="http://127.0.0.1:9" data-circuit="(\w+)">(.*?)</tr>',
                        html, re.S)
        assert row is not None and row.group(1) == "open"
        assert "probe in" in row.group(2) and "tollgate-small" in row.group(2)
    finally:
        Replica.objects.all().delete(), Deployment.objects.all().delete(), Pool.objects.all().delete()
        pools.reload_pools()
