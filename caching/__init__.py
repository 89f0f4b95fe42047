"""Caches of answers: the exact response cache, the semantic cache and the embedding cache.

Sits below ``serving`` (which calls it from its cache stages) and above
``tenants`` and ``metering``: it never imports serving, so the flow passes
in what it needs (the normalized request, embedding vectors).
"""
