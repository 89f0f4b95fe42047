"""Helpers every app may use and that use no app: per-process memos, one-round-trip transactions, money as text.

The bottom of the stack (docs/architecture.md, "Layers"): nothing here imports tenants, metering, budgets,
serving, dashboards or tollgate.
"""
