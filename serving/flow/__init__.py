"""The request flow: a request context through an ordered list of stages, then one settlement.

``serve_chat`` and ``serve_embeddings`` take a tenant context and a parsed
request (``RequestContext``) and return plain results; the /v1 edge, Celery
tasks and management commands all call them. See docs/architecture.md.
"""
