"""Drop per-process memos (core/memo.py) when prices, pool rates or chargeback policies change here; and
``ledger_row_observed``, sent for each ledger row once it is durable, in the process that wrote it (apps
above metering listen: the autoscaler's latency window), so metering never imports them."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from . import costs, pricing
from .models import CatalogModel, ChargebackPolicy, PoolRate, Price

# Sent with ``record`` (a UsageRecord just committed).
ledger_row_observed = Signal()


@receiver([post_save, post_delete], sender=Price, dispatch_uid="metering.forget_prices")
@receiver([post_save, post_delete], sender=CatalogModel, dispatch_uid="metering.forget_catalog")
def forget_prices(sender, **kwargs):
    pricing.forget_price_books()


@receiver([post_save, post_delete], sender=PoolRate, dispatch_uid="metering.forget_pool_rates")
@receiver([post_save, post_delete], sender=ChargebackPolicy, dispatch_uid="metering.forget_chargeback")
def forget_cost_settings(sender, **kwargs):
    costs.forget_cost_settings()
