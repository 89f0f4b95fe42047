"""The /v1 gateway's ASGI entry: Django's handler without the browser middleware.

Under ASGI, every ``MiddlewareMixin`` middleware runs its ``process_request``
and ``process_response`` through ``sync_to_async(thread_sensitive=True)``: two
hops to Django's one shared thread per middleware, per request, queueing
behind every other request's hops. The OpenAI API uses none of what that
middleware provides (sessions, CSRF, logged-in users, messages, frame
options, slash redirects): it authenticates API keys itself. So ``/v1/`` is
served by the same URLs and views through a handler with no middleware;
everything else (dashboards, admin, /api, /metrics) keeps the full stack.
"""

from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

GATEWAY_PREFIX = "/v1/"


class GatewayASGIHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(get_response)


def route_gateway_requests(gateway, default):
    """An ASGI app sending HTTP requests under /v1/ to ``gateway`` and everything else to ``default``."""

    async def application(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(GATEWAY_PREFIX):
            return await gateway(scope, receive, send)
        return await default(scope, receive, send)

    return application
