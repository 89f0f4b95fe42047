"""GPU pools cost $/GPU-hour × GPUs; orgs are charged by token prices or by GPU time, idle shared or overhead."""

from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest

from metering.costs import pool_statement
from metering.models import ChargebackMode, ChargebackPolicy, PoolRate, UsageRecord

from .helpers import record_attempt

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 10, tzinfo=dt_timezone.utc)


@pytest.fixture
def pool(db):
    # 4 GPUs at $2.50/GPU-hour: $240.00 a day, busy or idle; replicas span 2 GPUs each.
    return PoolRate.objects.create(pool="interactive", effective_from=DAY - timedelta(days=30),
                                   usd_per_gpu_hour=Decimal("2.50"), gpus=4, gpus_per_replica=2)


def test_a_requests_gpu_cost_is_its_engine_seconds_at_the_pools_rate(make_tenant, catalog, pool):
    acme = make_tenant("acme")
    ChargebackPolicy.objects.create(organization=acme.org, mode=ChargebackMode.GPU_OVERHEAD)
    record = record_attempt(acme.org, DAY, pool="interactive", engine_seconds=1.44)
    # 1.44 s × 2 GPUs × $2.50 / 3600 s
    assert record.cost_gpu == Decimal("0.002000000")
    assert record.pool_rate_id == pool.pk
    assert record.chargeback_mode == ChargebackMode.GPU_OVERHEAD
    assert record.cost_total == record.cost_base == record.cost_gpu  # billed by GPU time, not tokens


def test_token_priced_orgs_pay_tokens_and_still_see_their_gpu_cost(make_tenant, catalog, pool):
    acme = make_tenant("acme")
    record = record_attempt(acme.org, DAY, pool="interactive", engine_seconds=3.6, input_tokens=1000,
                            output_tokens=1000)
    assert record.chargeback_mode == ChargebackMode.TOKENS
    assert record.cost_total == record.cost_input + record.cost_output
    assert record.cost_gpu == Decimal("0.005000000")


def test_gpu_time_with_idle_shared_in_proportion_sums_to_the_pools_total_cost(make_tenant, catalog, pool):
    orgs = [make_tenant(slug) for slug in ("acme", "globex", "initech")]
    for tenant in orgs:
        ChargebackPolicy.objects.create(organization=tenant.org, mode=ChargebackMode.GPU_SHARED)
    # Awkward engine-seconds so that shares do not divide evenly.
    for i, seconds in enumerate([1.3, 7.77, 0.01, 123.456, 42.0, 3.33333]):
        record_attempt(orgs[i % 3].org, DAY + timedelta(hours=i), pool="interactive", engine_seconds=seconds)
    statement = pool_statement("interactive", DAY, DAY + timedelta(days=1))
    assert statement.total == Decimal("240.000000000")
    assert statement.used == sum(r.cost_gpu for r in UsageRecord.objects.all())
    assert sum(statement.charges.values()) == statement.total
    assert statement.platform_overhead == 0
    # Shared in proportion to use: the heaviest user carries the largest idle share.
    heaviest = max(statement.charges, key=lambda org: statement.charges[org] - statement.idle_shares[org])
    assert statement.idle_shares[heaviest] == max(statement.idle_shares.values())


def test_idle_time_of_overhead_orgs_stays_with_the_platform(make_tenant, catalog, pool):
    sharing, overhead = make_tenant("acme"), make_tenant("globex")
    ChargebackPolicy.objects.create(organization=sharing.org, mode=ChargebackMode.GPU_SHARED)
    ChargebackPolicy.objects.create(organization=overhead.org, mode=ChargebackMode.GPU_OVERHEAD)
    a = record_attempt(sharing.org, DAY, pool="interactive", engine_seconds=360.0)
    b = record_attempt(overhead.org, DAY, pool="interactive", engine_seconds=1080.0)
    statement = pool_statement("interactive", DAY, DAY + timedelta(days=1))
    assert statement.charges[overhead.org.pk] == b.cost_gpu  # only its own GPU time
    assert statement.idle_shares[sharing.org.pk] == (statement.idle / 4).quantize(Decimal("0.000000001"))
    assert statement.charges[sharing.org.pk] == a.cost_gpu + statement.idle_shares[sharing.org.pk]
    assert sum(statement.charges.values()) + statement.platform_overhead == statement.total
    assert statement.platform_overhead == statement.idle * 3 / 4


def test_a_pool_rate_change_mid_period_is_costed_piecewise(make_tenant, catalog, pool):
    PoolRate.objects.create(pool="interactive", effective_from=DAY + timedelta(hours=12),
                            usd_per_gpu_hour=Decimal("5.00"), gpus=4)
    statement = pool_statement("interactive", DAY, DAY + timedelta(days=1))
    assert statement.total == Decimal("360.000000000")  # 12 h × 4 × 2.50 + 12 h × 4 × 5.00


def test_failed_attempts_are_retry_cost_and_thrown_away_answers_are_escalation_cost(make_tenant, catalog):
    acme = make_tenant("acme")
    failed = record_attempt(acme.org, DAY, status=UsageRecord.Status.ERROR)
    thrown_away = record_attempt(acme.org, DAY, discarded=True)
    delivered = record_attempt(acme.org, DAY)
    assert failed.cost_retry == failed.cost_input + failed.cost_output > 0 and failed.cost_total == 0
    assert thrown_away.cost_escalation == thrown_away.cost_total > 0 and thrown_away.cost_base == 0
    assert delivered.cost_base == delivered.cost_total > 0
    for r in (failed, thrown_away, delivered):
        assert r.cost_total == r.cost_base + r.cost_escalation
