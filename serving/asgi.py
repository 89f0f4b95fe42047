"""Routing between the two ASGI applications of the web process.

``/v1/`` (the OpenAI API) goes to the Starlette gateway in serving/views.py;
everything else (dashboards, admin, /api, /metrics) to Django's handler with
its full middleware stack. Why two: serving/views.py.
"""

from __future__ import annotations

GATEWAY_PREFIX = "/v1/"


def route_gateway_requests(gateway, default):
    """An ASGI app sending HTTP requests under /v1/ (and /v1 itself) to ``gateway``, the rest to ``default``."""

    async def application(scope, receive, send):
        if scope["type"] == "http" and (scope["path"].startswith(GATEWAY_PREFIX) or scope["path"] == "/v1"):
            return await gateway(scope, receive, send)
        return await default(scope, receive, send)

    return application
