"""Budget enforcement: reserve the worst case before spending, settle the real cost after.

Counters live in the database (`BudgetCounter`, one row per budget and period
window). A request locks the rows of every budget that covers it, in one
order (budget id, window start) so two requests never wait on each other in
a cycle, decides (serve, downgrade or refuse), and adds its worst-case cost
to `reserved`. Settlement locks the same rows again, moves the reservation to
`spent` at the real cost, and commits together with the ledger row, so the
counters and the ledger cannot disagree. Why row locks and not Redis:
docs/architecture.md, "Budgets".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from core import db
from core.memo import NEEDS_A_THREAD, Memo, NotInMemory, Throttle, in_memory_only
from core.threads import on_thread_pool
from core.money import format_usd
from metering import pricing

from . import alerts, ledger
from .models import Alert, Budget, BudgetCounter, BudgetReservation
from .periods import budget_window, month_bounds  # noqa: F401  (month_bounds is part of this module's API)

HUNDRED = Decimal(100)


class BudgetExceeded(Exception):
    """A block budget has no room for this request's worst case."""

    def __init__(self, status: "BudgetStatus", worst_case: Decimal | None = None):
        self.status = status
        needed = f" This request could cost up to {format_usd(worst_case)}." if worst_case else ""
        held = f" ({format_usd(status.reserved)} more is held by requests in flight)" if status.reserved else ""
        super().__init__(
            f"Budget for {status.scope_label} is exhausted: {format_usd(status.spent)} of "
            f"{format_usd(status.amount)} spent this period{held}.{needed} "
            f"It resets at {status.period_end.isoformat()}."
        )


class QualityUnavailable(Exception):
    """The caller asked for `X-Quality: high` but a covering budget is downgrading."""

    def __init__(self, status: "BudgetStatus", requested_model: str, downgrade_model: str):
        self.status = status
        super().__init__(
            f"Budget for {status.scope_label} is past its downgrade threshold ({format_usd(status.spent)} of "
            f"{format_usd(status.amount)} spent), so requests are served on `{downgrade_model}` instead of "
            f"`{requested_model}`. Drop the X-Quality: high header to accept the cheaper model; full quality "
            f"returns when the budget resets at {status.period_end.isoformat()}."
        )


@dataclass(frozen=True)
class BudgetStatus:
    budget_id: int
    scope_label: str
    feature: str
    amount: Decimal
    spent: Decimal
    period_start: datetime
    period_end: datetime
    reserved: Decimal = Decimal(0)
    action: str = Budget.Action.BLOCK
    period: str = Budget.Period.MONTHLY
    downgrade_at_percent: int = 100
    is_active: bool = True
    forecast: Decimal | None = None
    downgraded_requests: int = 0
    refused_requests: int = 0

    @property
    def remaining(self) -> Decimal:
        return max(self.amount - self.spent, Decimal(0))

    @property
    def fraction_used(self) -> float:
        return float(self.spent / self.amount) if self.amount else 1.0

    @property
    def percent_used(self) -> Decimal:
        return (self.spent * HUNDRED / self.amount).quantize(Decimal("0.1")) if self.amount else HUNDRED

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.amount

    @property
    def downgrading(self) -> bool:
        return (self.action == Budget.Action.DOWNGRADE
                and self.spent + self.reserved >= self.amount * self.downgrade_at_percent / HUNDRED)

    @property
    def state(self) -> str:
        if not self.is_active:
            return "paused"
        if self.downgrading:
            return "downgrading"
        if self.exhausted:
            return "blocking" if self.action == Budget.Action.BLOCK else "over budget"
        if self.forecast is not None and self.forecast > self.amount:
            return "forecast over"
        return "ok"


@dataclass(frozen=True)
class CostEstimate:
    """The most a request can cost: its prompt at the input price plus max_tokens at the output price."""

    entry: pricing.CatalogEntry
    prompt_tokens: int
    max_tokens: int

    @property
    def worst_case(self) -> Decimal:
        return pricing.cost_of_tokens(self.entry, input_tokens=self.prompt_tokens,
                                      output_tokens=self.max_tokens).total


@dataclass(frozen=True)
class HeldBudget:
    """What settlement needs about one covering budget, carried with the reservation."""

    budget_id: int
    counter_id: int
    amount: Decimal
    thresholds: tuple[int, ...]
    window_start: datetime
    window_end: datetime
    is_blocking: bool


@dataclass
class Reservation:
    """A request's hold on every budget that covers it. Settle or release it exactly once."""

    request_id: str
    estimate: CostEstimate
    amount: Decimal = Decimal(0)
    held: tuple[HeldBudget, ...] = ()
    reservation_ids: tuple[int, ...] = ()
    downgraded_from: str = ""
    downgraded: bool = False
    statuses: list[BudgetStatus] = field(default_factory=list)
    closed: bool = False

    @property
    def downgrade_header(self) -> str:
        return f"{self.downgraded_from}->{self.estimate.entry.name}" if self.downgraded else ""




# --- which budgets cover a request -------------------------------------------


# Active budgets per org and counter ids per window, per web process (core/memo.py). Budget edits in
# this process drop them at once (budgets.signals and the admin actions below); counters hold the money
# and are always read and written in the database.
_org_budgets: Memo[tuple[Budget, ...]] = Memo("budgets by org")
_counter_ids: Memo[int] = Memo("budget counter ids")
_housekeeping = Throttle()


def forget_cached_budgets(org_id: int | None = None) -> None:
    if org_id is None:
        _org_budgets.invalidate()
    else:
        _org_budgets.invalidate(org_id)
    _counter_ids.invalidate()


def _active_budgets(org_id: int) -> tuple[Budget, ...]:
    return _org_budgets.get(org_id, lambda: tuple(
        Budget.objects.select_related("organization", "feature", "api_key", "user")
        .filter(organization_id=org_id, is_active=True).order_by("pk")))


def covering_budgets(org_id: int, feature_id: int | None, api_key_id: int | None, user_id: int | None,
                     at: datetime) -> list[tuple[Budget, datetime, datetime]]:
    """Active budgets covering the request, with their current window, in lock order (budget id)."""
    covering = []
    for budget in _active_budgets(org_id):
        if budget.feature_id is not None and budget.feature_id != feature_id:
            continue
        if budget.api_key_id is not None and budget.api_key_id != api_key_id:
            continue
        if budget.user_id is not None and budget.user_id != user_id:
            continue
        window = budget_window(budget, at)
        if window is not None:
            covering.append((budget, *window))
    return covering


def _counter_id(budget: Budget, start: datetime, end: datetime) -> int:
    return _counter_ids.get((budget.pk, start), lambda: counter_for(budget, start, end).pk)


def counter_for(budget: Budget, start: datetime, end: datetime) -> BudgetCounter:
    """The counter of one window, created on first use from the ledger (a new period, a reset, a new budget).

    Requests that reserve in a window always find its counter already there, so
    the ledger sum taken at creation never includes a request this counter will
    also settle.
    """
    counter = BudgetCounter.objects.filter(budget=budget, window_start=start).first()
    if counter is not None:
        return counter
    try:
        with transaction.atomic():
            return BudgetCounter.objects.create(budget=budget, window_start=start, window_end=end,
                                                spent=ledger.scope_spend(budget, start, end))
    except IntegrityError:  # another process created it first
        return BudgetCounter.objects.get(budget=budget, window_start=start)


def _status(budget: Budget, counter: BudgetCounter, **extra) -> BudgetStatus:
    return _status_of(budget, counter.spent, counter.reserved, counter.window_start, counter.window_end, **extra)


def _status_of(budget: Budget, spent: Decimal, reserved: Decimal, start: datetime, end: datetime,
               **extra) -> BudgetStatus:
    return BudgetStatus(
        budget_id=budget.pk, scope_label=budget.scope_label, feature=budget.feature.slug if budget.feature_id else "",
        amount=budget.amount, spent=spent, reserved=reserved, period_start=start, period_end=end,
        action=budget.action, period=budget.period, downgrade_at_percent=budget.downgrade_at_percent,
        is_active=budget.is_active, **extra,
    )


# --- reserve, settle, release -----------------------------------------------


def needs_alternatives(org_id: int, feature_id: int | None, api_key_id: int | None, user_id: int | None,
                       at: datetime) -> bool:
    """Whether a downgrade budget covers the request, so the router should price cheaper alternatives.

    Read from this process's memo of budgets (no counter is touched): the
    router asks before it routes, then hands the alternatives to ``reserve_budget``.
    """
    return any(budget.action == Budget.Action.DOWNGRADE
               for budget, _, _ in covering_budgets(org_id, feature_id, api_key_id, user_id, at))


def _downgrade_choice(alternatives: Sequence[CostEstimate], cap: int | None) -> CostEstimate | None:
    """The cheapest alternative (they come cheapest first), held to the downgrade budgets' output cap."""
    if not alternatives:
        return None
    cheapest = alternatives[0]
    return CostEstimate(cheapest.entry, cheapest.prompt_tokens, min(cheapest.max_tokens, cap or cheapest.max_tokens))


def reserve_budget(request_id: str, org_id: int, feature_id: int | None, api_key_id: int | None,
                   user_id: int | None, estimate: CostEstimate, at: datetime, *, quality_high: bool = False,
                   alternatives: Sequence[CostEstimate] = (), fast_path: bool = True) -> Reservation:
    """Hold the worst-case cost against every covering budget, or refuse.

    Raises BudgetExceeded when a block budget has no room for the worst case,
    and QualityUnavailable when the caller insists on full quality while a
    downgrade budget is past its threshold. ``alternatives`` are the cheaper
    ways the router found to serve the same request (cheapest first, each
    with its prompt counted on its own model); a downgrading budget picks
    among them here, under its locks, and never calls back into serving.
    The chosen estimate is the reservation's ``estimate``. ``fast_path=False``
    goes straight to the locked path (``areserve_budget`` already found that
    the one-statement hold cannot decide).
    """
    covering = covering_budgets(org_id, feature_id, api_key_id, user_id, at)
    if not covering:
        return Reservation(request_id=request_id, estimate=estimate)
    _sweep_stale_reservations_now_and_then()
    budgets_by_id = {budget.pk: budget for budget, _, _ in covering}
    counter_ids = [_counter_id(b, start, end) for b, start, end in covering]
    if fast_path and connection.vendor == "postgresql":
        held = _reserve_in_one_statement(request_id, budgets_by_id, counter_ids, estimate, at)
        if held is not None:
            return held

    refusal: BudgetExceeded | None = None
    with transaction.atomic():
        locked = _locked_counters(counter_ids)
        if len(locked) != len(counter_ids):  # a counter this process remembered is gone (a reset): again
            forget_cached_budgets()
            locked = _locked_counters([counter_for(budget, start, end).pk for budget, start, end in covering])
        statuses = [_status(budgets_by_id[c.budget_id], c) for c in locked]

        chosen, downgraded_from, downgraded = estimate, "", False
        downgrading = [s for s in statuses if s.downgrading]
        if downgrading:
            caps = [budgets_by_id[s.budget_id].downgrade_max_tokens for s in downgrading]
            cap = min((c for c in caps if c), default=None)
            cheaper = _downgrade_choice(alternatives, cap)
            if cheaper is None or cheaper.worst_case > estimate.worst_case:
                cheaper = CostEstimate(estimate.entry, estimate.prompt_tokens,
                                       min(estimate.max_tokens, cap or estimate.max_tokens))
            if cheaper.entry.name != estimate.entry.name or cheaper.max_tokens < estimate.max_tokens:
                if quality_high:
                    raise QualityUnavailable(downgrading[0], estimate.entry.name, cheaper.entry.name)
                chosen, downgraded_from, downgraded = cheaper, estimate.entry.name, True

        worst_case = chosen.worst_case
        for status in statuses:
            if status.action == Budget.Action.BLOCK and status.spent + status.reserved + worst_case > status.amount:
                refusal = BudgetExceeded(status, worst_case)
                break
        if refusal is None:
            BudgetCounter.objects.filter(pk__in=[c.pk for c in locked]).update(reserved=F("reserved") + worst_case)
            rows = BudgetReservation.objects.bulk_create([
                BudgetReservation(counter_id=c.pk, request_id=request_id, amount=worst_case, created_at=at)
                for c in locked
            ])
            ids = tuple(r.pk for r in rows) if all(r.pk for r in rows) else tuple(
                BudgetReservation.objects.filter(request_id=request_id, counter_id__in=[c.pk for c in locked])
                .values_list("pk", flat=True))
    if refusal is not None:
        # A block budget now refuses: that is its 100% moment, whatever the settled spend says.
        budget = budgets_by_id[refusal.status.budget_id]
        if 100 in budget.threshold_percents:
            alerts.raise_alert(budget, Alert.Kind.THRESHOLD, 100, refusal.status.period_start,
                               refusal.status.period_end, spent=refusal.status.spent)
        raise refusal
    held = tuple(
        HeldBudget(budget_id=c.budget_id, counter_id=c.pk, amount=budgets_by_id[c.budget_id].amount,
                   thresholds=tuple(budgets_by_id[c.budget_id].threshold_percents), window_start=c.window_start,
                   window_end=c.window_end, is_blocking=budgets_by_id[c.budget_id].action == Budget.Action.BLOCK)
        for c in locked
    )
    return Reservation(request_id=request_id, estimate=chosen, amount=worst_case, held=held, reservation_ids=ids,
                       downgraded_from=downgraded_from, downgraded=downgraded, statuses=statuses)


def _locked_counters(counter_ids: list[int]) -> list[BudgetCounter]:
    # (The counters' ids come from this process's memo: reading each counter by its window first was one
    # more query per budget on every request of the locked path, the embedded default's only path.)
    return list(BudgetCounter.objects.select_for_update().filter(pk__in=counter_ids)
                .order_by("budget_id", "window_start"))


_COUNTERS = BudgetCounter._meta.db_table
_RESERVATIONS = BudgetReservation._meta.db_table
_LOCK_IN_ORDER = f"SELECT id FROM {_COUNTERS} WHERE id = ANY(%s::bigint[]) ORDER BY budget_id, window_start FOR UPDATE"
_RESERVE = f"""
WITH held AS (
    UPDATE {_COUNTERS} SET reserved = reserved + %s, updated_at = %s
    WHERE id = ANY(%s::bigint[])
    RETURNING id, budget_id, spent, reserved, window_start, window_end
), rows AS (
    INSERT INTO {_RESERVATIONS} (counter_id, request_id, amount, created_at)
    SELECT id, %s, %s, %s FROM held
    RETURNING id, counter_id
)
SELECT held.id, held.budget_id, held.spent, held.reserved, held.window_start, held.window_end, rows.id
FROM held JOIN rows ON rows.counter_id = held.id
"""
_RELEASE = f"""
WITH released AS (
    DELETE FROM {_RESERVATIONS} WHERE id = ANY(%s::bigint[]) RETURNING counter_id, amount
)
UPDATE {_COUNTERS} AS c SET reserved = c.reserved - released.amount
FROM released WHERE c.id = released.counter_id
"""


def _ids(ids) -> str:
    """Row ids as one PostgreSQL array literal (``{1,2}``), for ``ANY(%s::bigint[])``: psycopg builds a list
    dumper for every list parameter of every statement, which cost more than the rest of the hold."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def _locking(counter_ids: list[int]) -> list[db.Statement]:
    # Several counters are locked in the fixed order first, so two requests never wait on each other in a cycle.
    return [db.Statement(_LOCK_IN_ORDER, [_ids(counter_ids)])] if len(counter_ids) > 1 else []


def _reserve_in_one_statement(request_id: str, budgets_by_id: dict[int, Budget], counter_ids: list[int],
                              estimate: CostEstimate, at: datetime) -> Reservation | None:
    """PostgreSQL's fast path: hold the worst case on every counter in one round trip, then look.

    The common case (room left, nothing downgrading) is one transaction sent
    and answered at once. Otherwise the hold is given back and this returns
    None: the caller takes the locked path, which decides the downgrade or
    refusal with its full explanation. (Between the two, other requests see
    the extra hold and may be refused a moment early; never the reverse.)
    """
    if not db.can_batch():
        return None
    # A hold need not survive a database crash: settlement subtracts only the holds it finds and
    # counts the cost either way. So its commit skips the wait for the WAL flush; the settlement,
    # which writes the ledger row, keeps it.
    rows = db.run_transaction(_hold_statements(request_id, counter_ids, estimate, at), synchronous_commit=False)
    held, release = _reservation_from_hold(request_id, budgets_by_id, counter_ids, estimate, rows)
    if release:
        db.run_transaction(release)
    return held


async def areserve_budget(request_id: str, org_id: int, feature_id: int | None, api_key_id: int | None,
                          user_id: int | None, estimate: CostEstimate, at: datetime) -> Reservation | None:
    """``reserve_budget``'s fast path from the event loop (``db.async_ready()``), with no thread crossed.

    Raises ``NotInMemory`` when this process must first read budgets or
    counters from the database, or housekeeping is due: call
    ``reserve_budget`` on a thread then. Returns None when the one-statement
    hold cannot decide (a budget downgrading or out of room): call
    ``reserve_budget(..., fast_path=False)`` on a thread, which decides
    under the locks.
    """
    try:
        with in_memory_only():
            covering = covering_budgets(org_id, feature_id, api_key_id, user_id, at)
            if not covering:
                return Reservation(request_id=request_id, estimate=estimate)
            _sweep_stale_reservations_now_and_then()
            counter_ids = [_counter_id(b, start, end) for b, start, end in covering]
    except NEEDS_A_THREAD as exc:  # only from here: once the hold is sent, nothing may be done twice
        raise NotInMemory(str(exc)) from exc
    budgets_by_id = {budget.pk: budget for budget, _, _ in covering}
    rows = await db.arun_transaction(_hold_statements(request_id, counter_ids, estimate, at),
                                     synchronous_commit=False)  # as in _reserve_in_one_statement
    held, release = _reservation_from_hold(request_id, budgets_by_id, counter_ids, estimate, rows)
    if release:
        await db.arun_transaction(release)
    return held


def _hold_statements(request_id: str, counter_ids: list[int], estimate: CostEstimate,
                     at: datetime) -> list[db.Statement]:
    worst_case = estimate.worst_case
    return [*_locking(counter_ids),
            db.Statement(_RESERVE, [worst_case, timezone.now(), _ids(counter_ids), request_id, worst_case, at])]


def _reservation_from_hold(request_id: str, budgets_by_id: dict[int, Budget], counter_ids: list[int],
                           estimate: CostEstimate, rows: list[tuple]) -> tuple[Reservation | None, list[db.Statement]]:
    """What the one-statement hold's ``rows`` mean: (the reservation, nothing to run), or (None, the statements
    that give the hold back) when the locked path must decide."""
    worst_case = estimate.worst_case
    # (The counters' values straight into statuses: a model instance per row cost more than the rest here.)
    statuses = [_status_of(budgets_by_id[budget_id], spent, reserved - worst_case, start, end)
                for _, budget_id, spent, reserved, start, end, _ in rows]
    over = any(s.action == Budget.Action.BLOCK and s.spent + s.reserved + worst_case > s.amount for s in statuses)
    if len(rows) != len(counter_ids) or over or any(s.downgrading for s in statuses):
        if len(rows) != len(counter_ids):  # a counter went away (budget deleted): re-read
            forget_cached_budgets()
        release = [*_locking(counter_ids), db.Statement(_RELEASE, [_ids(r[6] for r in rows)])] if rows else []
        return None, release
    rows.sort(key=lambda r: (r[1], r[4]))
    statuses.sort(key=lambda s: (s.budget_id, s.period_start))
    held = tuple(
        HeldBudget(budget_id=budget_id, counter_id=counter_id, amount=budgets_by_id[budget_id].amount,
                   thresholds=tuple(budgets_by_id[budget_id].threshold_percents), window_start=start,
                   window_end=end, is_blocking=budgets_by_id[budget_id].action == Budget.Action.BLOCK)
        for counter_id, budget_id, _, _, start, end, _ in rows
    )
    return Reservation(request_id=request_id, estimate=estimate, amount=worst_case, held=held,
                       reservation_ids=tuple(r[6] for r in rows), statuses=statuses), []


_SETTLE = f"""
WITH released AS (
    DELETE FROM {_RESERVATIONS} WHERE id = ANY(%s::bigint[]) RETURNING counter_id, amount
)
UPDATE {_COUNTERS} AS c
SET spent = c.spent + %s,
    reserved = c.reserved - COALESCE((SELECT SUM(r.amount) FROM released r WHERE r.counter_id = c.id), 0),
    updated_at = %s
WHERE c.id = ANY(%s::bigint[])
RETURNING c.id, c.spent
"""


def settlement_statements(reservation: Reservation | None, cost: Decimal) -> list[db.Statement]:
    """The statements that settle ``reservation`` at ``cost`` (PostgreSQL), for the caller's transaction.

    The last one returns (counter id, spent after); hand those rows to
    ``after_settlement``. Empty when no budget applies or it is already settled.
    """
    if reservation is None or not reservation.held or reservation.closed:
        return []
    counter_ids = [h.counter_id for h in reservation.held]
    return [*_locking(counter_ids),
            db.Statement(_SETTLE, [_ids(reservation.reservation_ids), cost, timezone.now(), _ids(counter_ids)])]


def after_settlement(reservation: Reservation | None, cost: Decimal, rows: list[tuple]) -> Decimal | None:
    """Once the settlement committed: raise the alerts it crossed; return the smallest room left."""
    if reservation is None or not reservation.held or reservation.closed:
        return None
    reservation.closed = True
    crossed, remaining = _crossings(reservation, cost, dict(rows))
    _raise_threshold_alerts(crossed)
    _check_forecasts(reservation)
    return remaining


async def aafter_settlement(reservation: Reservation | None, cost: Decimal, rows: list[tuple]) -> Decimal | None:
    """``after_settlement`` from the event loop: in memory when no threshold was crossed and no forecast check
    is due (nearly always); otherwise on a thread, since alerts write to the database."""
    if reservation is None or not reservation.held or reservation.closed:
        return None
    crossed, remaining = _crossings(reservation, cost, dict(rows))
    if crossed or any(_housekeeping.pending(("forecast", held.budget_id)) for held in reservation.held):
        return await on_thread_pool(after_settlement)(reservation, cost, rows)
    reservation.closed = True
    return remaining


def _raise_threshold_alerts(crossed) -> None:
    for held, percent, spent in crossed:
        alerts.raise_alert(held.budget_id, Alert.Kind.THRESHOLD, percent, held.window_start, held.window_end,
                           spent=spent, amount=held.amount)


def _check_forecasts(reservation: Reservation) -> None:
    for held in reservation.held:
        _check_forecast_now_and_then(held.budget_id)


def _crossings(reservation: Reservation, cost: Decimal, spent_after: dict[int, Decimal]):
    crossed = []
    remaining = None
    for held in reservation.held:
        if held.counter_id not in spent_after:  # the budget was deleted while the request ran
            continue
        after = spent_after[held.counter_id]
        before = after - cost
        room = max(held.amount - after, Decimal(0))
        remaining = room if remaining is None else min(remaining, room)
        for percent in held.thresholds:
            line = held.amount * percent / HUNDRED
            if before < line <= after:
                crossed.append((held, percent, after))
    return crossed, remaining


def settle_reservation(reservation: Reservation | None, cost: Decimal) -> Decimal | None:
    """Replace the reservation by the real cost. Returns the smallest budget room left, if any budget applies.

    Call it inside the transaction that writes the ledger row, so both commit
    or neither does. A reservation already released (by the stale sweeper)
    is not subtracted twice; the cost is still counted. (On PostgreSQL
    ``budgets.settlement.settle_usage`` uses ``settlement_statements`` and
    ``after_settlement`` instead: the same settlement in the ledger rows'
    single round trip.)
    """
    if reservation is None or not reservation.held or reservation.closed:
        return None
    statements = settlement_statements(reservation, cost)
    reservation.closed = True
    with transaction.atomic(savepoint=False):  # inside the ledger row's transaction: no savepoint needed
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement.sql, statement.params)
                spent_after = dict(cursor.fetchall())
        else:
            spent_after = _settle_with_orm(reservation, cost)
        crossed, remaining = _crossings(reservation, cost, spent_after)
        _raise_threshold_alerts(crossed)
    _check_forecasts(reservation)
    return remaining


def _settle_with_orm(reservation: Reservation, cost: Decimal) -> dict[int, Decimal]:
    """Settlement on databases other than PostgreSQL (SQLite: the whole database is locked anyway)."""
    counter_ids = [h.counter_id for h in reservation.held]
    locked = {c.pk: c for c in BudgetCounter.objects.select_for_update()
              .filter(pk__in=counter_ids).order_by("budget_id", "window_start")}
    still_held: dict[int, Decimal] = {}  # a reservation extended for an escalation holds two rows per counter
    for counter_id, amount in BudgetReservation.objects.filter(pk__in=reservation.reservation_ids).values_list(
            "counter_id", "amount"):
        still_held[counter_id] = still_held.get(counter_id, Decimal(0)) + amount
    BudgetReservation.objects.filter(pk__in=reservation.reservation_ids).delete()
    spent_after = {}
    for counter in locked.values():
        release = still_held.get(counter.pk, Decimal(0))
        BudgetCounter.objects.filter(pk=counter.pk).update(spent=F("spent") + cost, reserved=F("reserved") - release)
        spent_after[counter.pk] = counter.spent + cost
    return spent_after


def extend_reservation(reservation: Reservation, estimate: CostEstimate, org_id: int, feature_id: int | None,
                       api_key_id: int | None, user_id: int | None, at: datetime) -> bool:
    """Also hold ``estimate``'s worst case (an escalation to a stronger model), or say no.

    The extra hold is reserved like any request (under the same locks, so concurrent requests cannot
    overspend a block budget) and then joins ``reservation``: its one settlement releases both holds and
    spends the real cost once. False, holding nothing more, when a block budget has no room for it or a
    downgrade budget is past its threshold (it asks for cheaper answers, not stronger ones).
    """
    try:
        extra = reserve_budget(f"{reservation.request_id}:{len(reservation.reservation_ids)}", org_id, feature_id,
                               api_key_id, user_id, estimate, at)
    except (BudgetExceeded, QualityUnavailable):
        return False
    if extra.downgraded or {h.counter_id for h in extra.held} != {h.counter_id for h in reservation.held}:
        release_reservation(extra)  # (a budget appeared or ended meanwhile: do not mix two sets of counters)
        return False
    reservation.reservation_ids = (*reservation.reservation_ids, *extra.reservation_ids)
    reservation.amount += extra.amount
    return True


def release_reservation(reservation: Reservation | None) -> None:
    """Give a reservation back without spending (the request failed before it could be billed)."""
    if reservation is None or not reservation.held or reservation.closed:
        return
    reservation.closed = True
    with transaction.atomic():
        _release_rows(reservation.reservation_ids)



def _release_rows(reservation_ids) -> int:
    """Delete reservation rows and take their amounts off their counters (inside a transaction)."""
    counter_ids = set(BudgetReservation.objects.filter(pk__in=reservation_ids).values_list("counter_id", flat=True))
    if not counter_ids:
        return 0
    list(BudgetCounter.objects.select_for_update().filter(pk__in=counter_ids).order_by("budget_id", "window_start"))
    rows = list(BudgetReservation.objects.filter(pk__in=reservation_ids).values_list("pk", "counter_id", "amount"))
    per_counter: dict[int, Decimal] = {}
    for _, counter_id, amount in rows:
        per_counter[counter_id] = per_counter.get(counter_id, Decimal(0)) + amount
    BudgetReservation.objects.filter(pk__in=[pk for pk, _, _ in rows]).delete()
    for counter_id, amount in per_counter.items():
        BudgetCounter.objects.filter(pk=counter_id).update(reserved=F("reserved") - amount)
    return len(rows)


def release_stale_reservations(older_than_s: float | None = None, now: datetime | None = None) -> int:
    """Release reservations whose request never settled (its process died). Returns how many."""
    ttl = settings.TOLLGATE_RESERVATION_TTL_S if older_than_s is None else older_than_s
    cutoff = (now or timezone.now()) - timedelta(seconds=ttl)
    ids = list(BudgetReservation.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:5000])
    if not ids:
        return 0
    with transaction.atomic():
        return _release_rows(ids)


def _sweep_stale_reservations_now_and_then() -> None:
    # Beat runs the sweep too; this keeps the embedded default (no beat) from leaking reservations.
    interval = max(1, int(settings.TOLLGATE_RESERVATION_TTL_S // 4))
    if _housekeeping.due("stale-sweep", interval) and cache.add("budgets:stale-sweep", 1, timeout=interval):
        release_stale_reservations()


# --- rebuilding counters from the ledger ------------------------------------


def rebuild_counters(budget_ids=None, at: datetime | None = None) -> list[BudgetCounter]:
    """Recompute the current window's counters of active budgets from the ledger and the open reservations.

    The counter row is locked while the ledger is summed; a settlement commits
    its ledger row and its counter update together, so it is counted exactly
    once either way. Returns the rebuilt counters.
    """
    at = at or timezone.now()
    budgets = Budget.objects.select_related("organization", "feature", "api_key", "user").filter(is_active=True)
    if budget_ids is not None:
        budgets = budgets.filter(pk__in=list(budget_ids))
    rebuilt = []
    for budget in budgets.order_by("pk"):
        window = budget_window(budget, at)
        if window is None:
            continue
        counter = counter_for(budget, *window)
        with transaction.atomic():
            counter = BudgetCounter.objects.select_for_update().get(pk=counter.pk)
            counter.spent = ledger.scope_spend(budget, counter.window_start, counter.window_end)
            counter.reserved = (BudgetReservation.objects.filter(counter=counter)
                                .aggregate(total=Sum("amount"))["total"] or Decimal(0))
            counter.save(update_fields=["spent", "reserved", "updated_at"])
        rebuilt.append(counter)
    return rebuilt


# --- admin actions ---------------------------------------------------------


def reset_budgets(budget_ids, at: datetime | None = None) -> int:
    """Start the current period over from now: spend before `at` no longer counts against these budgets."""
    changed = Budget.objects.filter(pk__in=list(budget_ids)).update(reset_at=at or timezone.now())
    forget_cached_budgets()
    return changed


def pause_budgets(budget_ids) -> int:
    changed = Budget.objects.filter(pk__in=list(budget_ids)).update(is_active=False)
    forget_cached_budgets()
    return changed


def resume_budgets(budget_ids) -> int:
    changed = Budget.objects.filter(pk__in=list(budget_ids)).update(is_active=True)
    forget_cached_budgets()
    return changed


# --- status and forecasts ---------------------------------------------------


def forecast_spend(budget: Budget, spent: Decimal, window_start: datetime, window_end: datetime,
                   at: datetime) -> Decimal:
    """Projected spend at window end: spend so far plus the recent rate over the time left.

    The rate is the ledger spend of the last TOLLGATE_FORECAST_LOOKBACK_S
    seconds (or since the window started, if later), divided by at least
    TOLLGATE_FORECAST_MIN_LOOKBACK_S, so one early request does not project a fortune.
    """
    if at >= window_end:
        return spent
    lookback_start = max(window_start, at - timedelta(seconds=settings.TOLLGATE_FORECAST_LOOKBACK_S))
    recent = ledger.scope_spend(budget, lookback_start, at)
    seconds = max((at - lookback_start).total_seconds(), settings.TOLLGATE_FORECAST_MIN_LOOKBACK_S)
    rate = recent / Decimal(str(seconds))
    return pricing.quantize_money(spent + rate * Decimal(str((window_end - at).total_seconds())))


def budget_status(budget: Budget, at: datetime, *, with_activity: bool = False) -> BudgetStatus | None:
    """The budget's counters in the window at `at` (read, not locked), with its forecast."""
    window = budget_window(budget, at)
    if window is None:
        return None
    start, end = window
    counter = BudgetCounter.objects.filter(budget=budget, window_start=start).first()
    if counter is None:
        counter = BudgetCounter(budget=budget, window_start=start, window_end=end,
                                spent=ledger.scope_spend(budget, start, end))
    extra = {"forecast": forecast_spend(budget, counter.spent, start, end, at)}
    if with_activity:
        activity = ledger.scope_activity(budget, start, end)
        extra.update(downgraded_requests=activity["downgraded"], refused_requests=activity["refused"])
    return _status(budget, counter, **extra)


def budget_statuses(org_id: int, at: datetime, *, include_paused: bool = False) -> list[BudgetStatus]:
    """Every budget of the org in force at `at`, with spend, reservations, forecast and activity (dashboards)."""
    budgets = Budget.objects.select_related("organization", "feature", "api_key", "user").filter(organization_id=org_id)
    if not include_paused:
        budgets = budgets.filter(is_active=True)
    statuses = (budget_status(b, at, with_activity=True) for b in budgets.order_by("pk"))
    return [s for s in statuses if s is not None]


def check_forecast(budget: Budget, at: datetime | None = None) -> Alert | None:
    """Raise a "forecast to exceed" alert (once per window) when the recent rate would pass the amount."""
    at = at or timezone.now()
    status = budget_status(budget, at)
    if status is None or status.forecast is None or status.exhausted or status.forecast <= status.amount:
        return None
    return alerts.raise_alert(budget, Alert.Kind.FORECAST, 100, status.period_start, status.period_end,
                              spent=status.spent, forecast=status.forecast)


def check_all_forecasts(at: datetime | None = None) -> int:
    """Forecast check over every active budget (beat). Returns how many new alerts were raised."""
    raised = 0
    for budget in Budget.objects.select_related("organization", "feature", "api_key", "user").filter(is_active=True):
        if check_forecast(budget, at) is not None:
            raised += 1
    return raised


def _check_forecast_now_and_then(budget_id: int) -> None:
    # At most once per interval per budget, across processes (cache.add is atomic on Redis).
    interval = max(1, int(settings.TOLLGATE_FORECAST_CHECK_INTERVAL_S))
    if (_housekeeping.due(("forecast", budget_id), interval)
            and cache.add(f"budgets:forecast:{budget_id}", 1, timeout=interval)):
        budget = Budget.objects.select_related("organization", "feature", "api_key", "user").filter(
            pk=budget_id, is_active=True).first()
        if budget is not None:
            check_forecast(budget)


# --- downgrade routing --------------------------------------------------------


def downgrade_candidates(at: datetime) -> list[pricing.CatalogEntry]:
    """Active, priced models, cheapest first: lowest tier, then output price, then input price."""
    entries = []
    for model in pricing.active_catalog():
        try:
            entries.append(pricing.catalog_entry(model.name, at))
        except pricing.UnknownModel:
            continue
    return sorted(entries, key=lambda e: (e.tier, e.output_per_mtok, e.input_per_mtok, e.name))
