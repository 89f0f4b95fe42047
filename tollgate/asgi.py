"""ASGI entry point: the web process that serves /v1, dashboards and admin.

Only this process opens ClickHouse (lazily) and, on embedded defaults, runs
the usage shipper thread; management commands never do.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (needs Django set up first)

from tollgate.telemetry import configure_tracing  # noqa: E402

configure_tracing()

if settings.TOLLGATE_INPROCESS_SHIPPER:
    from metering.shipping import start_inprocess_shipper

    start_inprocess_shipper()

# Every web process samples its pools for the autoscaler (TOLLGATE_AUTOSCALE_SAMPLE_S; 0: off).
from autoscaling.background import start_sampler  # noqa: E402

start_sampler()

# /static/ is served by WhiteNoise's middleware inside Django (TOLLGATE_SERVE_STATIC, settings.py).
site_application = django_application

# /v1 (the OpenAI API) is served by Starlette in this same process: see serving/views.py.
from serving.asgi import route_gateway_requests  # noqa: E402
from serving.views import gateway  # noqa: E402

application = route_gateway_requests(gateway, site_application)

# What is alive once the app is loaded lives as long as the process. Frozen, the cyclic garbage collector
# stops walking it: a full collection walked the whole heap (Django, the apps and, once a prompt is
# counted, torch), about 0.2 s each, every few thousand streamed tokens (docs/benchmarks.md).
import gc  # noqa: E402

gc.collect()
gc.freeze()
