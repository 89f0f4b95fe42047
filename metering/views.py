"""Prometheus `/metrics` for the gateway (operators scrape it; see metering.metrics)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import render_metrics


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """With TOLLGATE_METRICS_TOKEN set, the token is required and every series is shown. Without it,
    per-org series (what each tenant spends) are left out unless TOLLGATE_METRICS_PER_ORG says otherwise."""
    token = settings.TOLLGATE_METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            return HttpResponse("metrics need the bearer token\n", status=401, content_type="text/plain")
    per_org = bool(token) or settings.TOLLGATE_METRICS_PER_ORG
    return HttpResponse(render_metrics(per_org=per_org), content_type=CONTENT_TYPE_LATEST)
