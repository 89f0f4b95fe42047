"""Counters per period window: a new month starts from zero without losing requests still in flight,
and every counter can be rebuilt from the ledger."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction

from budgets import services
from budgets.models import Budget, BudgetCounter, BudgetReservation
from metering import pricing
from metering.services import UsageDraft, record_usage

pytestmark = pytest.mark.django_db(transaction=True)

NOV_LAST_SECOND = datetime(2026, 11, 30, 23, 59, 59, tzinfo=timezone.utc)
DEC_FIRST_SECOND = datetime(2026, 12, 1, 0, 0, 1, tzinfo=timezone.utc)


def reserve(tenant, at, request_id, prompt_tokens=1000, max_tokens=1000):
    entry = pricing.catalog_entry("tollgate-large", at)
    return services.reserve_budget(request_id, tenant.org.pk, tenant.key.default_feature_id, tenant.key.pk, None,
                                   services.CostEstimate(entry, prompt_tokens, max_tokens), at)


def settle(tenant, reservation, at, output_tokens):
    """What budgets.settlement.settle_usage does off PostgreSQL: the ledger row and the counters in one transaction."""
    entry = reservation.estimate.entry
    cost = pricing.cost_of_tokens(entry, input_tokens=reservation.estimate.prompt_tokens, output_tokens=output_tokens)
    with transaction.atomic():
        record = record_usage(UsageDraft(
            request_id=reservation.request_id, org_id=tenant.org.pk, created_at=at, model_requested=entry.name,
            model_served=entry.name, feature=tenant.key.default_feature.slug, api_key_id=tenant.key.pk,
            input_tokens=reservation.estimate.prompt_tokens, output_tokens=output_tokens,
            cost_input=cost.input, cost_output=cost.output, price_id=entry.price_id))
        services.settle_reservation(reservation, record.cost_total)
    return record.cost_total


def test_a_new_month_starts_from_zero_while_last_months_requests_settle_into_last_month(tenant):
    # tollgate-large: 1000 in + 1000 out at most = $0.018 per request; room for two in a month.
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("0.036"))
    late_nov_1 = reserve(tenant, NOV_LAST_SECOND, "nov-1")
    late_nov_2 = reserve(tenant, NOV_LAST_SECOND, "nov-2")
    with pytest.raises(services.BudgetExceeded) as refused:
        reserve(tenant, NOV_LAST_SECOND, "nov-3")
    assert refused.value.status.period_end == datetime(2026, 12, 1, tzinfo=timezone.utc)

    # Midnight passes with both November requests still generating. December has the whole budget.
    early_dec = reserve(tenant, DEC_FIRST_SECOND, "dec-1")
    nov = BudgetCounter.objects.get(budget=budget, window_start=datetime(2026, 11, 1, tzinfo=timezone.utc))
    dec = BudgetCounter.objects.get(budget=budget, window_start=datetime(2026, 12, 1, tzinfo=timezone.utc))
    assert (nov.reserved, dec.reserved) == (Decimal("0.036"), Decimal("0.018"))

    nov_cost = settle(tenant, late_nov_1, NOV_LAST_SECOND, 10) + settle(tenant, late_nov_2, NOV_LAST_SECOND, 20)
    dec_cost = settle(tenant, early_dec, DEC_FIRST_SECOND, 30)
    nov.refresh_from_db()
    dec.refresh_from_db()
    assert (nov.spent, nov.reserved) == (nov_cost, 0)
    assert (dec.spent, dec.reserved) == (dec_cost, 0)
    assert not BudgetReservation.objects.exists()

    # The ledger agrees with both months' counters: a rebuild of either changes nothing.
    for at, counter in ((NOV_LAST_SECOND, nov), (DEC_FIRST_SECOND, dec)):
        (rebuilt,) = services.rebuild_counters([budget.pk], at=at)
        assert (rebuilt.pk, rebuilt.spent) == (counter.pk, counter.spent)


def test_month_boundaries_follow_the_org_time_zone(make_tenant, catalog):
    tenant = make_tenant("tokyo", tz="Asia/Tokyo")
    Budget.objects.create(organization=tenant.org, amount=Decimal("1"))
    # 16:00 UTC on Nov 30 is already December 1 in Tokyo.
    reservation = reserve(tenant, datetime(2026, 11, 30, 16, 0, tzinfo=timezone.utc), "jst")
    assert reservation.held[0].window_start == datetime(2026, 11, 30, 15, 0, tzinfo=timezone.utc)


def test_lost_counters_are_rebuilt_from_the_ledger(tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("10"), period=Budget.Period.DAILY)
    at = datetime.now(timezone.utc)
    spent = sum(settle(tenant, reserve(tenant, at, f"r{i}"), at, 100 + i) for i in range(3))
    in_flight = reserve(tenant, at, "still-running")
    BudgetCounter.objects.update(spent=0, reserved=0)  # the counter store is lost or wrong

    call_command("rebuild_budget_counters", stdout=open("/dev/null", "w"))

    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.spent == spent
    assert counter.reserved == in_flight.amount  # open reservations are kept
    settle(tenant, in_flight, at, 5)
    counter.refresh_from_db()
    assert counter.reserved == 0


def test_a_reservation_whose_request_died_is_released_after_its_ttl(tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("0.02"))
    at = datetime.now(timezone.utc)
    orphan = reserve(tenant, at, "process-died")
    with pytest.raises(services.BudgetExceeded):
        reserve(tenant, at, "blocked-by-the-orphan")
    assert services.release_stale_reservations(older_than_s=60, now=at + timedelta(seconds=61)) == 1
    assert BudgetCounter.objects.get(budget=budget).reserved == 0
    reserve(tenant, at, "fits-again")
    # Should the lost request settle after all, its cost counts but its reservation is not given back twice.
    settle(tenant, orphan, at, 1)
    counter = BudgetCounter.objects.get(budget=budget)
    assert counter.reserved == Decimal("0.018")  # only "fits-again" is still held


def test_a_released_reservation_spends_nothing(tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("1"))
    at = datetime.now(timezone.utc)
    services.release_reservation(reserve(tenant, at, "engine-down"))
    counter = BudgetCounter.objects.get(budget=budget)
    assert (counter.spent, counter.reserved) == (0, 0)
    assert not BudgetReservation.objects.exists()


def test_reset_starts_the_period_over_from_now(tenant):
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("0.02"))
    at = datetime.now(timezone.utc)
    settle(tenant, reserve(tenant, at, "before-reset"), at, 1000)
    with pytest.raises(services.BudgetExceeded):
        reserve(tenant, at, "refused")
    services.reset_budgets([budget.pk], at=at + timedelta(seconds=1))
    reservation = reserve(tenant, at + timedelta(seconds=2), "after-reset")
    assert reservation.held[0].window_start == at + timedelta(seconds=1)
    assert BudgetCounter.objects.filter(budget=budget).count() == 2


def test_the_locked_path_finds_a_counter_again_when_the_one_it_remembered_is_gone(tenant):
    # The locked path takes counter ids from this process's memo; a counter deleted behind its back (another
    # process rebuilt it) must be found or made again, not skipped (which would hold nothing against it).
    budget = Budget.objects.create(organization=tenant.org, amount=Decimal("1"))
    services.release_reservation(reserve(tenant, DEC_FIRST_SECOND, "first"))  # the counter's id, memoized
    BudgetCounter.objects.filter(budget=budget).delete()
    entry = pricing.catalog_entry("tollgate-large", DEC_FIRST_SECOND)
    held = services.reserve_budget("second", tenant.org.pk, tenant.key.default_feature_id, tenant.key.pk, None,
                                   services.CostEstimate(entry, 1000, 1000), DEC_FIRST_SECOND, fast_path=False)
    counter = BudgetCounter.objects.get(budget=budget)
    assert [h.counter_id for h in held.held] == [counter.pk]
    assert counter.reserved == held.amount > 0
