"""Settling a request: every attempt's ledger row and the move from reservation to real cost, at once.

A request settles exactly once, however many attempts it took (primary,
retries, escalations, a cache hit) and however it ended (answered, failed,
refused, abandoned by its client). ``settle_usage`` is that one step: the
ledger rows (metering owns their shape) and the budget counters (this app
owns them) commit in one transaction, so the ledger and the counters can
never disagree. On PostgreSQL the whole transaction goes out as one round
trip (``core.db``); elsewhere it runs through the ORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction

from core import db
from core.memo import NEEDS_A_THREAD, in_memory_only
from core.threads import on_thread_pool
from metering import pricing
from metering.models import UsageRecord
from metering.services import (UsageDraft, ledger_committed, ledger_committed_in_memory, ledger_insert, ledger_row,
                               record_usage)

from .services import Reservation, aafter_settlement, after_settlement, settle_reservation, settlement_statements


@dataclass(frozen=True)
class SettledUsage:
    """What a settled request cost, for its response headers."""

    records: tuple[UsageRecord, ...]
    cost: Decimal  # everything billed for the request, every attempt's share added up
    budget_remaining: Decimal | None  # the smallest room left in a covering budget; None when none applies


def settle_usage(reservation: Reservation | None, drafts: Sequence[UsageDraft]) -> SettledUsage:
    """Write every attempt's ledger row and settle ``reservation`` at their billed total, in one transaction.

    With no drafts (nothing ran: the pool's queue was full, the engine was
    down before it started) the reservation is simply given back. A refused
    request passes its refusal row and no reservation.
    """
    if db.can_batch():
        records = [ledger_row(draft) for draft in drafts]
        cost = _billed(records)
        statements = [*(ledger_insert(record) for record in records), *settlement_statements(reservation, cost)]
        rows = (db.run_transaction(statements, synchronous_commit=settings.TOLLGATE_LEDGER_SYNCHRONOUS_COMMIT)
                if statements else [])
        for record in records:
            ledger_committed(record)
        room = after_settlement(reservation, cost, rows)
    else:
        with transaction.atomic():
            records = [record_usage(draft) for draft in drafts]
            cost = _billed(records)
            room = settle_reservation(reservation, cost)
    return _settled(records, cost, room)


_settle_usage_on_thread_pool = on_thread_pool(settle_usage)


async def asettle_usage(reservation: Reservation | None, drafts: Sequence[UsageDraft]) -> SettledUsage:
    """``settle_usage`` from the event loop: the same transaction on the loop's async pool (``core.db``) when
    everything it needs besides is in this process's memos; otherwise (and off PostgreSQL) on a thread."""
    if not db.async_ready():
        return await _settle_usage_on_thread_pool(reservation, drafts)
    try:
        with in_memory_only():
            records = [ledger_row(draft) for draft in drafts]  # pool rates and chargeback modes, memoized
            for record in records:
                ledger_committed_in_memory(record)  # what runs after the commit must not need the database
    except NEEDS_A_THREAD:  # (nothing is written before this point)
        return await _settle_usage_on_thread_pool(reservation, drafts)
    cost = _billed(records)
    statements = [*(ledger_insert(record) for record in records), *settlement_statements(reservation, cost)]
    rows = (await db.arun_transaction(statements, synchronous_commit=settings.TOLLGATE_LEDGER_SYNCHRONOUS_COMMIT)
            if statements else [])
    for record in records:
        ledger_committed(record)
    return _settled(records, cost, await aafter_settlement(reservation, cost, rows))


def _settled(records: Sequence[UsageRecord], cost: Decimal, room: Decimal | None) -> SettledUsage:
    remaining = None if room is None else pricing.quantize_money(room)
    return SettledUsage(records=tuple(records), cost=cost, budget_remaining=remaining)


def _billed(records: Sequence[UsageRecord]) -> Decimal:
    return sum((record.cost_total for record in records), Decimal(0))
