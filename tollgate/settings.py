"""Tollgate settings: every knob is an environment variable with an embedded default.

The defaults run everything in one process with no services (SQLite, embedded
ClickHouse through chDB, local-memory cache, Celery tasks in-process, the CPU
engine in-process). Production sets DATABASE_URL, REDIS_URL, CLICKHOUSE_DSN and
CELERY_BROKER_URL. Each variable is documented in docs/configuration.md.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import dj_database_url
from csp.constants import NONCE

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


# Where embedded state lives (SQLite file, chDB folder).
VAR_DIR = Path(env("TOLLGATE_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env("SECRET_KEY", "insecure-dev-key-change-me-in-production-0123456789")
ALLOWED_HOSTS = [h.strip() for h in env("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# Production behind HTTPS (directly, or behind a TLS-terminating proxy that sets X-Forwarded-Proto):
# secure-only session and CSRF cookies, HSTS, and Django's pages redirected to HTTPS. Off by default,
# since the embedded default serves plain HTTP on 127.0.0.1. `manage.py check --deploy` passes with it on.
TOLLGATE_HTTPS = env_bool("TOLLGATE_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = TOLLGATE_HTTPS
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", TOLLGATE_HTTPS)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if TOLLGATE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", TOLLGATE_HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", TOLLGATE_HTTPS)
if env_bool("TOLLGATE_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "csp",
    "rest_framework",
    "drf_spectacular",
    "tenants",
    "metering",
    "budgets",
    "routing",
    "caching",
    "serving",
    "autoscaling",
    "batches",
    "capacity",
    "dashboards",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every Django page (policy below); early, so error pages carry it too.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.login_throttle.LoginThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tollgate.urls"
ASGI_APPLICATION = "tollgate.asgi.application"
WSGI_APPLICATION = "tollgate.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
            ],
        },
    },
]

# Under ASGI every request runs its database work on a fresh thread, so
# Django's persistent connections would leak one connection per thread.
# PostgreSQL uses psycopg's connection pool instead (Django >= 5.1).
DATABASES = {"default": dj_database_url.parse(env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'tollgate.sqlite3'}"))}
DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2),
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20),
        # Seconds a request waits for a connection; when PostgreSQL is down, how soon it gets its 503.
        "timeout": float(env("DATABASE_POOL_TIMEOUT_S", "10")),
    }
    # A pooled connection is checked (an empty query) when a thread takes it: after a database outage the
    # idle connections are all dead, and the gateway's hot path no longer takes Django's connections often
    # enough to flush them (core/db.py runs its transactions on its own async pool, which checks without a
    # round trip). Unchecked, each dead one failed a later request (a memo reload, an admin page) with a 503.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Here a thread keeps its connection (the thread pool's threads are few and long-lived; core.threads
    # closes one that errored): opening one runs the WAL pragmas and registers Django's functions, and
    # opening and closing took 1.2–1.6 ms, which the embedded default paid on every thread-pool call.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    # The gateway writes from several threads; wait for the lock rather than fail.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # Transactions take the write lock when they begin, so a read-then-write
    # transaction (budget reservations) waits instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # Write-ahead log: a commit appends to one file (one fsync, or none with synchronous=NORMAL) instead of
    # writing a rollback journal and the database (several fsyncs), and readers do not wait for the writer.
    # Every request writes twice (its budget hold, its settlement), so on the embedded default the commit
    # is what 32 concurrent requests queue on. With TOLLGATE_LEDGER_SYNCHRONOUS_COMMIT=false, as on
    # PostgreSQL, a commit returns before it is on disk: a crash of the machine (not of the process) may
    # lose the last commits.
    DATABASES["default"]["OPTIONS"]["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous="
        + ("FULL" if env_bool("TOLLGATE_LEDGER_SYNCHRONOUS_COMMIT", True) else "NORMAL"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tollgate"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
# Sign-in throttling (tenants/login_throttle.py): this many failures for one username from one address within
# the window lock that username out from that address for the lockout time (seconds).
TOLLGATE_LOGIN_FAILURE_LIMIT = env_int("TOLLGATE_LOGIN_FAILURE_LIMIT", 5)
TOLLGATE_LOGIN_FAILURE_WINDOW_S = env_int("TOLLGATE_LOGIN_FAILURE_WINDOW_S", 15 * 60)
TOLLGATE_LOGIN_LOCKOUT_S = env_int("TOLLGATE_LOGIN_LOCKOUT_S", 15 * 60)
LOGIN_REDIRECT_URL = "dashboards:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(VAR_DIR / "static")))
try:  # WhiteNoise scans it at start; an empty folder until collectstatic fills it
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:
    pass
# plotly.js is served from the installed plotly package, never from a CDN.
STATICFILES_DIRS = [("plotly", str(Path(__import__("plotly").__file__).parent / "package_data"))]
# Serve /static/ from the web process itself, through WhiteNoise: gzip (and brotli where the brotli package
# is installed) and, for the content-hashed names collectstatic writes, Cache-Control for a year
# ("immutable"). Without collectstatic the files are still served (from the apps and plotly, through the
# finders) under their plain names, uncompressed, with a 60-second lifetime. `make run` collects them.
# Behind a web server or CDN set it to false and serve STATIC_ROOT there.
TOLLGATE_SERVE_STATIC = env_bool("TOLLGATE_SERVE_STATIC", True)
if TOLLGATE_SERVE_STATIC:
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "tollgate.staticfiles.CompressedHashedStaticFiles"},
}

# --- Content-Security-Policy (django-csp) ------------------------------------
# Pages load scripts, styles, fonts and images from this site only, and talk to it only: nothing a page
# shows (tenant usage) can be sent elsewhere by a script, and no other site may frame it. Scripts:
# 'self' plus a per-response nonce for an inline script that needs one (the dashboards have none: their
# charts are drawn by a static file from JSON data blocks, which are not scripts). Styles allow inline
# style attributes, which plotly.js sets on every element it draws and Django's admin uses; a style
# attribute cannot run code. img-src allows data: and blob: for plotly's PNG download and the admin's
# icons. TOLLGATE_CSP_REPORT_ONLY=true sends the same policy as Content-Security-Policy-Report-Only.
_CSP_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", NONCE],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
if env_bool("TOLLGATE_CSP_REPORT_ONLY", False):
    CONTENT_SECURITY_POLICY_REPORT_ONLY = _CSP_POLICY
else:
    CONTENT_SECURITY_POLICY = _CSP_POLICY

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # httpx logs every request at INFO: one line per engine call and health probe on the hot path.
        "httpx": {"level": "WARNING"},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}
SPECTACULAR_SETTINGS = {"TITLE": "Tollgate API", "VERSION": "0.1.0"}

# --- Celery -----------------------------------------------------------------
# Without a broker, tasks run in-process (eagerly) and the usage shipper runs
# as a thread inside the web server instead of as a beat task.
_celery_broker = env("CELERY_BROKER_URL", "")
CELERY_BROKER_URL = _celery_broker or "memory://"
CELERY_TASK_ALWAYS_EAGER = not _celery_broker
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULE = {
    "ship-usage": {"task": "metering.tasks.ship_usage", "schedule": float(env("TOLLGATE_SHIP_INTERVAL_S", "2"))},
}

# --- ClickHouse and telemetry -----------------------------------------------
CLICKHOUSE_DSN = env("CLICKHOUSE_DSN", f"chdb:///{VAR_DIR / 'clickhouse'}")
OTEL_SERVICE_NAME = env("OTEL_SERVICE_NAME", "tollgate")
# The span batches to ClickHouse (tollgate/telemetry.py): the standard OTEL_BSP_* variables, with larger
# defaults than the SDK's (ClickHouse wants few large inserts).
OTEL_BSP_MAX_QUEUE_SIZE = env_int("OTEL_BSP_MAX_QUEUE_SIZE", 65536)
OTEL_BSP_MAX_EXPORT_BATCH_SIZE = env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 16384)
# Either set: spans also go to an OpenTelemetry Collector over OTLP/HTTP. The exporter reads these and the
# other OTEL_EXPORTER_OTLP_* variables itself; these two only decide whether there is an exporter.
OTEL_EXPORTER_OTLP_ENDPOINT = env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
# Export spans to ClickHouse's otel_traces table (same schema as the Collector's exporter).
TOLLGATE_SPANS_TO_CLICKHOUSE = env_bool("TOLLGATE_SPANS_TO_CLICKHOUSE", True)
# Ship the usage outbox from a thread inside the web process (embedded default).
TOLLGATE_INPROCESS_SHIPPER = env_bool("TOLLGATE_INPROCESS_SHIPPER", not _celery_broker)
TOLLGATE_SHIP_INTERVAL_S = float(env("TOLLGATE_SHIP_INTERVAL_S", "2"))
TOLLGATE_SHIP_BATCH_SIZE = env_int("TOLLGATE_SHIP_BATCH_SIZE", 5000)
# A claimed outbox batch not marked shipped after this many seconds (its
# shipper crashed) is re-sent, same rows, same dedup token.
TOLLGATE_SHIP_LEASE_S = float(env("TOLLGATE_SHIP_LEASE_S", "60"))
# If set, /metrics requires `Authorization: Bearer <token>`.
TOLLGATE_METRICS_TOKEN = env("TOLLGATE_METRICS_TOKEN", "")
# Without a token, per-org series (each tenant's requests, tokens and spend) are left out of /metrics
# unless this is true (a scrape endpoint reachable only from a private network).
TOLLGATE_METRICS_PER_ORG = env_bool("TOLLGATE_METRICS_PER_ORG", False)
# Several web processes: an empty folder (wiped at deploy) where prometheus-client keeps per-process
# counters that /metrics merges (metering/metrics.py). Unset: each process reports its own.
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR", "")
# Collectors other apps add to /metrics (dotted paths to classes with collect()), read at scrape time: apps above
# metering (the autoscaling gauges) plug in here, so metering never imports them.
TOLLGATE_METRICS_EXTRA_COLLECTORS = ["autoscaling.metrics.AutoscalingCollector"]

# --- Processes ----------------------------------------------------------------
# Where `manage.py serve` listens (seed_demo prints its addresses with PORT) and uvicorn's log level there.
HOST = env("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000)
UVICORN_LOG_LEVEL = env("UVICORN_LOG_LEVEL", "info")
# Seconds an idle client connection is kept open. Longer than a load balancer's idle timeout (60 s on most),
# so the balancer, not the server, closes idle connections: a server that closes one just as a request
# arrives on it resets that request.
TOLLGATE_HTTP_KEEP_ALIVE_S = float(env("TOLLGATE_HTTP_KEEP_ALIVE_S", "75"))
# `manage.py serve_engine` (an engine worker) listens on HOST and PORT too, with its own defaults.
SERVE_ENGINE_PORT = env_int("PORT", 8100)
SERVE_ENGINE_LOG_LEVEL = env("UVICORN_LOG_LEVEL", "warning")

# --- Gateway ----------------------------------------------------------------
# Largest request body accepted by /v1 (bytes) and the default output cap
# when a request sends no max_tokens.
TOLLGATE_MAX_REQUEST_BYTES = env_int("TOLLGATE_MAX_REQUEST_BYTES", 1_048_576)
TOLLGATE_DEFAULT_MAX_TOKENS = env_int("TOLLGATE_DEFAULT_MAX_TOKENS", 64)
TOLLGATE_MAX_TOKENS_LIMIT = env_int("TOLLGATE_MAX_TOKENS_LIMIT", 1024)
# The tier classifier `model: "auto"` uses (routing/classifier.py); empty: the one kept in the repository.
TOLLGATE_ROUTER_CLASSIFIER = env("TOLLGATE_ROUTER_CLASSIFIER", "")
# Idempotency-Key: how long a request's answer is kept for replay, and how long an unfinished first request
# holds its key (a process that died mid-request gives it back then).
TOLLGATE_IDEMPOTENCY_TTL_S = env_int("TOLLGATE_IDEMPOTENCY_TTL_S", 24 * 3600)
TOLLGATE_IDEMPOTENCY_RUNNING_S = env_int("TOLLGATE_IDEMPOTENCY_RUNNING_S", 600)
# Rate limits (per key and per org, set in admin; serving/ratelimits.py): the store shared by every web process
# (Redis; empty: this process's memory, for one process), and how long a request waits for it before it is
# admitted unchecked (fail open, counted in tollgate_rate_limit_store_errors_total).
TOLLGATE_RATE_LIMIT_REDIS_URL = env("TOLLGATE_RATE_LIMIT_REDIS_URL", REDIS_URL)
TOLLGATE_RATE_LIMIT_REDIS_TIMEOUT_S = float(env("TOLLGATE_RATE_LIMIT_REDIS_TIMEOUT_S", "0.25"))


def env_limit(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else None


# The limits a new organization or key starts with (edit them in admin afterwards); unset: none (unlimited).
TOLLGATE_DEFAULT_ORG_REQUESTS_PER_MINUTE = env_limit("TOLLGATE_DEFAULT_ORG_REQUESTS_PER_MINUTE")
TOLLGATE_DEFAULT_ORG_TOKENS_PER_MINUTE = env_limit("TOLLGATE_DEFAULT_ORG_TOKENS_PER_MINUTE")
TOLLGATE_DEFAULT_KEY_REQUESTS_PER_MINUTE = env_limit("TOLLGATE_DEFAULT_KEY_REQUESTS_PER_MINUTE")
TOLLGATE_DEFAULT_KEY_TOKENS_PER_MINUTE = env_limit("TOLLGATE_DEFAULT_KEY_TOKENS_PER_MINUTE")
# API keys are stored as HMAC-SHA256 keyed with this secret (by default SECRET_KEY). Changing it invalidates
# every issued key: set it once, keep it with SECRET_KEY in the secret store.
TOLLGATE_API_KEY_HASH_SECRET = env("TOLLGATE_API_KEY_HASH_SECRET", "") or SECRET_KEY
# A rotated key (admin action "Rotate", tenants.services.rotate_api_key) keeps working this long beside the new one.
TOLLGATE_API_KEY_ROTATION_OVERLAP_S = env_int("TOLLGATE_API_KEY_ROTATION_OVERLAP_S", 24 * 3600)
# Token optimization (serving/stages/optimize_tokens.py), for orgs and features without a routing policy:
# the steps that run ("off", "on", or a comma list of dedupe, tools, context, history; a request's
# X-Tollgate-Optimize may switch some off),
# the prompt budgets in tokens past which context is selected and history summarized, the longest string
# kept in a tool output, and the history summary's length and cache lifetime.
TOLLGATE_TOKEN_OPTIMIZATION = env("TOLLGATE_TOKEN_OPTIMIZATION", "on")
TOLLGATE_CONTEXT_BUDGET_TOKENS = env_int("TOLLGATE_CONTEXT_BUDGET_TOKENS", 1024)
TOLLGATE_HISTORY_BUDGET_TOKENS = env_int("TOLLGATE_HISTORY_BUDGET_TOKENS", 1536)
TOLLGATE_TOOL_OUTPUT_FIELD_CHARS = env_int("TOLLGATE_TOOL_OUTPUT_FIELD_CHARS", 2000)
TOLLGATE_SUMMARY_MAX_TOKENS = env_int("TOLLGATE_SUMMARY_MAX_TOKENS", 96)
TOLLGATE_SUMMARY_CACHE_TTL_S = env_int("TOLLGATE_SUMMARY_CACHE_TTL_S", 86400)
# The unsafe-content check escalation runs (serving/validation.py): a dotted path to check(text) -> reason
# or None. The default flags card numbers, private keys, API keys and weapon instructions.
TOLLGATE_UNSAFE_CONTENT_CHECK = env("TOLLGATE_UNSAFE_CONTENT_CHECK", "serving.validation.default_unsafe_check")
# The request flow's stages before the answer, in order (serving/stages/, docs/architecture.md); the flow
# always ends by settling and responding. The cache stages sit after route (their keys hold the served
# model) and before reserve_budget (a hit holds no budget).
TOLLGATE_CHAT_STAGES = [
    "serving.stages.rate_limit",
    "serving.stages.idempotency",
    "serving.stages.optimize_tokens",
    "serving.stages.route",
    "serving.stages.cache",
    "serving.stages.reserve_budget",
    "serving.stages.generate",
]
# /v1/completions shares route, budget and generation with chat; raw_prompt sends the prompt untemplated.
TOLLGATE_COMPLETIONS_STAGES = [
    "serving.stages.rate_limit",
    "serving.stages.idempotency",
    "serving.stages.route",
    "serving.stages.raw_prompt",
    "serving.stages.reserve_budget",
    "serving.stages.generate",
]
TOLLGATE_EMBEDDINGS_STAGES = [
    "serving.stages.rate_limit",
    "serving.stages.idempotency",
    "serving.stages.route",
    "serving.stages.embedding_cache",
    "serving.stages.reserve_budget",
    "serving.stages.embed",
]
# Caches (caching/, docs/configuration.md): all of them on or off; how long an answer is kept when neither the feature's cache
# policy nor the caller's Cache-Control says otherwise; the semantic cache on or off for everyone; how
# large a partition is searched exactly before an HNSW graph is built; partitions indexed per process.
TOLLGATE_CACHE = env_bool("TOLLGATE_CACHE", True)  # false: no request is answered from or kept in any cache
TOLLGATE_CACHE_TTL_S = env_int("TOLLGATE_CACHE_TTL_S", 24 * 3600)
TOLLGATE_SEMANTIC_CACHE = env_bool("TOLLGATE_SEMANTIC_CACHE", True)
TOLLGATE_SEMANTIC_EXACT_MAX = env_int("TOLLGATE_SEMANTIC_EXACT_MAX", 4096)
TOLLGATE_SEMANTIC_PARTITIONS_IN_MEMORY = env_int("TOLLGATE_SEMANTIC_PARTITIONS_IN_MEMORY", 10_000)
# The Batch API (batches/): the largest input file and the most requests in one, how many lines of a batch
# run at once, and the Celery priority of batch tasks (low: interactive work's tasks go first).
TOLLGATE_BATCH_FILE_MAX_BYTES = env_int("TOLLGATE_BATCH_FILE_MAX_BYTES", 50 * 1024 * 1024)
TOLLGATE_BATCH_MAX_LINES = env_int("TOLLGATE_BATCH_MAX_LINES", 50_000)
TOLLGATE_BATCH_CONCURRENCY = env_int("TOLLGATE_BATCH_CONCURRENCY", 4)
TOLLGATE_BATCH_TASK_PRIORITY = env_int("TOLLGATE_BATCH_TASK_PRIORITY", 9)
# A batch line refused for now (rate limit, full pool queue, no replica) waits its Retry-After (at most this many
# seconds) and tries again, this many tries in all, before it goes to the error file.
TOLLGATE_BATCH_LINE_MAX_TRIES = env_int("TOLLGATE_BATCH_LINE_MAX_TRIES", 20)
TOLLGATE_BATCH_LINE_MAX_WAIT_S = env_int("TOLLGATE_BATCH_LINE_MAX_WAIT_S", 30)
# Capacity planning (capacity/, manage.py plan_capacity): the replica curve a plan replays demand through, and
# what one replica-hour costs where no pool has a GPU rate (metering's PoolRate, $/GPU-hour x GPUs a replica).
TOLLGATE_CAPACITY_CURVE = env("TOLLGATE_CAPACITY_CURVE", str(BASE_DIR / "bench" / "data" / "cpu_engine_curve.json"))
TOLLGATE_CAPACITY_REPLICA_HOUR_USD = env("TOLLGATE_CAPACITY_REPLICA_HOUR_USD", "2.50")
# Routes other apps add to the /v1 gateway (dotted paths to lists of Starlette routes), before its catch-all:
# apps above serving (the Batch API) plug in here, so serving never imports them.
TOLLGATE_GATEWAY_EXTRA_ROUTES = ["batches.api.routes"]
# Which engine serves models without a deployment: "cpu" runs the CPU engine in this process, "none" none.
TOLLGATE_ENGINE = env("TOLLGATE_ENGINE", "cpu")
TOLLGATE_CPU_MAX_NUM_SEQS = env_int("TOLLGATE_CPU_MAX_NUM_SEQS", 32)
TOLLGATE_CPU_MAX_NUM_BATCHED_TOKENS = env_int("TOLLGATE_CPU_MAX_NUM_BATCHED_TOKENS", 4096)
TOLLGATE_CPU_PREFIX_CACHING = env_bool("TOLLGATE_CPU_PREFIX_CACHING", True)
TOLLGATE_CPU_PREFIX_CACHE_BLOCKS = env_int("TOLLGATE_CPU_PREFIX_CACHE_BLOCKS", 1024)
# Threads torch computes with in the CPU engine (here or in a worker); 0: torch's default.
TOLLGATE_CPU_ENGINE_THREADS = env_int("TOLLGATE_CPU_ENGINE_THREADS", 0)
# Where `manage.py serve` runs the CPU engine: "in-process" (in the web process, as tests' live servers do)
# or "separate" (a `serve_engine` child process on a free local port, reached over HTTP, so the web
# process's event loop and the engine do not share one interpreter lock). In-process stays the default:
# on the 2-core machines here the child was not faster (docs/benchmarks.md, "Batching through the gateway").
TOLLGATE_CPU_ENGINE_PROCESS = env("TOLLGATE_CPU_ENGINE_PROCESS", "in-process")
# A CPU engine worker (`manage.py serve_engine --embeddings`) that stands in for the in-process engine and
# embedder; `serve` sets it for its child. Blank: the engine runs in the process that serves.
TOLLGATE_CPU_ENGINE_URL = env("TOLLGATE_CPU_ENGINE_URL", "")
# Pools (serving.models; docs/configuration.md): admission, replica choice, health, remote workers.
TOLLGATE_POOL_MAX_QUEUE = env_int("TOLLGATE_POOL_MAX_QUEUE", 256)
TOLLGATE_POOL_CONFIG_TTL_S = float(env("TOLLGATE_POOL_CONFIG_TTL_S", "5"))
# How long a web process may reuse API keys, prices, budget definitions and chargeback modes it has read
# (core/memo.py). The process that changes one sees the change at once; others within this many seconds.
TOLLGATE_CONFIG_CACHE_TTL_S = float(env("TOLLGATE_CONFIG_CACHE_TTL_S", "5"))
# true: a request's ledger row is flushed to disk (PostgreSQL WAL) before its response is sent, so no
# served request's usage can be lost. false: the commit returns before the flush (about 1 ms sooner on
# this project's machines); a PostgreSQL crash may then lose the last fraction of a second of ledger rows.
TOLLGATE_LEDGER_SYNCHRONOUS_COMMIT = env_bool("TOLLGATE_LEDGER_SYNCHRONOUS_COMMIT", True)
# The budget hold and the settlement run from the web server's event loop on psycopg's async pool (PostgreSQL
# only; its own connections, up to DATABASE_POOL_MAX_SIZE more): no thread-pool hop per request. false: both
# run on the thread pool through Django's connections, as everything else does.
TOLLGATE_ASYNC_DATABASE = env_bool("TOLLGATE_ASYNC_DATABASE", True)
TOLLGATE_PREFIX_AFFINITY_CHARS = env_int("TOLLGATE_PREFIX_AFFINITY_CHARS", 256)
TOLLGATE_PREFIX_AFFINITY_SLACK = env_int("TOLLGATE_PREFIX_AFFINITY_SLACK", 4)
TOLLGATE_HEALTH_CHECK_INTERVAL_S = float(env("TOLLGATE_HEALTH_CHECK_INTERVAL_S", "2"))
TOLLGATE_ENGINE_CONNECT_TIMEOUT_S = float(env("TOLLGATE_ENGINE_CONNECT_TIMEOUT_S", "2"))
TOLLGATE_ENGINE_READ_TIMEOUT_S = float(env("TOLLGATE_ENGINE_READ_TIMEOUT_S", "120"))
# How long an idle connection to a worker is kept for reuse: below the worker's own keep-alive (5 s for
# vLLM's and uvicorn's defaults), so the gateway never writes a request on a connection being closed.
TOLLGATE_ENGINE_KEEP_ALIVE_S = float(env("TOLLGATE_ENGINE_KEEP_ALIVE_S", "3"))
# Retries (serving/resilience.py): only failures before the first token that cost nothing (refused or
# reset connections, a worker's 429/502/503/504); at most this many tries per request, with full-jitter
# exponential backoff, and at most RATIO x requests (+ MIN) retries per pool over the window.
TOLLGATE_RETRY_MAX_ATTEMPTS = env_int("TOLLGATE_RETRY_MAX_ATTEMPTS", 3)
TOLLGATE_RETRY_BACKOFF_BASE_MS = float(env("TOLLGATE_RETRY_BACKOFF_BASE_MS", "25"))
TOLLGATE_RETRY_BACKOFF_MAX_MS = float(env("TOLLGATE_RETRY_BACKOFF_MAX_MS", "1000"))
TOLLGATE_RETRY_BUDGET_RATIO = float(env("TOLLGATE_RETRY_BUDGET_RATIO", "0.2"))
TOLLGATE_RETRY_BUDGET_MIN = env_int("TOLLGATE_RETRY_BUDGET_MIN", 10)
TOLLGATE_RETRY_BUDGET_WINDOW_S = float(env("TOLLGATE_RETRY_BUDGET_WINDOW_S", "10"))
# Circuit breaker per replica: open after FAILURES consecutive failures, or when ERROR_RATE of the last
# WINDOW tries failed (once MIN_CALLS are in); half-open after OPEN_S, when one probe request goes through.
TOLLGATE_BREAKER_FAILURES = env_int("TOLLGATE_BREAKER_FAILURES", 5)
TOLLGATE_BREAKER_ERROR_RATE = float(env("TOLLGATE_BREAKER_ERROR_RATE", "0.5"))
TOLLGATE_BREAKER_WINDOW = env_int("TOLLGATE_BREAKER_WINDOW", 20)
TOLLGATE_BREAKER_MIN_CALLS = env_int("TOLLGATE_BREAKER_MIN_CALLS", 10)
TOLLGATE_BREAKER_OPEN_S = float(env("TOLLGATE_BREAKER_OPEN_S", "10"))
# The longest a generation may run (seconds) and what a caller may ask for with X-Tollgate-Timeout.
# Past it the engine is stopped; with X-Tollgate-Partial: allow the caller gets what was generated.
TOLLGATE_GENERATION_TIMEOUT_S = float(env("TOLLGATE_GENERATION_TIMEOUT_S", "600"))
# Embeddings: all-MiniLM-L6-v2 in this process unless a deployment puts it on a worker.
TOLLGATE_EMBEDDINGS_IN_PROCESS = env_bool("TOLLGATE_EMBEDDINGS_IN_PROCESS", True)
TOLLGATE_EMBEDDING_MAX_BATCH = env_int("TOLLGATE_EMBEDDING_MAX_BATCH", 64)
TOLLGATE_EMBEDDING_MAX_WAIT_MS = float(env("TOLLGATE_EMBEDDING_MAX_WAIT_MS", "2"))
# Cost of a request whose price is unknown is never zero: requests to a model
# with no price row are refused. Prices are Decimal per 1M tokens.
TOLLGATE_CURRENCY = "USD"
MONEY_QUANTUM = Decimal("0.000000001")

# --- Budgets and alerts -------------------------------------------------------
# A reservation whose request never settled (its process died) is released after this many seconds.
TOLLGATE_RESERVATION_TTL_S = float(env("TOLLGATE_RESERVATION_TTL_S", "900"))
# Forecasts: the spend rate of the last LOOKBACK seconds (divided by at least MIN_LOOKBACK),
# checked at most every CHECK_INTERVAL seconds per budget.
TOLLGATE_FORECAST_LOOKBACK_S = float(env("TOLLGATE_FORECAST_LOOKBACK_S", "3600"))
TOLLGATE_FORECAST_MIN_LOOKBACK_S = float(env("TOLLGATE_FORECAST_MIN_LOOKBACK_S", "600"))
TOLLGATE_FORECAST_CHECK_INTERVAL_S = float(env("TOLLGATE_FORECAST_CHECK_INTERVAL_S", "300"))
# Alert delivery: retries after the first try, backoff base (doubles each retry), webhook timeout.
TOLLGATE_ALERT_MAX_RETRIES = env_int("TOLLGATE_ALERT_MAX_RETRIES", 3)
TOLLGATE_ALERT_RETRY_BACKOFF_S = float(env("TOLLGATE_ALERT_RETRY_BACKOFF_S", "30"))
TOLLGATE_ALERT_WEBHOOK_TIMEOUT_S = float(env("TOLLGATE_ALERT_WEBHOOK_TIMEOUT_S", "5"))
CELERY_BEAT_SCHEDULE["budget-forecasts"] = {"task": "budgets.tasks.check_forecasts",
                                            "schedule": TOLLGATE_FORECAST_CHECK_INTERVAL_S}
CELERY_BEAT_SCHEDULE["budget-stale-reservations"] = {"task": "budgets.tasks.release_stale_reservations",
                                                     "schedule": 60.0}
# --- Autoscaling (autoscaling/, docs/operations.md) ---------------------------
# Each web process samples its pools every SAMPLE_S seconds (0: no sampler) into the cache shared by processes;
# the recommendation runs every INTERVAL_S (beat; without a broker, from one web process's sampler); p95s and
# rates cover the last WINDOW_S seconds.
TOLLGATE_AUTOSCALE_SAMPLE_S = float(env("TOLLGATE_AUTOSCALE_SAMPLE_S", "5"))
TOLLGATE_AUTOSCALE_INTERVAL_S = float(env("TOLLGATE_AUTOSCALE_INTERVAL_S", "15"))
TOLLGATE_AUTOSCALE_WINDOW_S = float(env("TOLLGATE_AUTOSCALE_WINDOW_S", "60"))
# Work pools have accepted and not yet received, reported per pool by apps above autoscaling (dotted paths to
# functions returning {pool: autoscaling.sampling.PendingWork}), read at each recommendation: the Batch API's
# lines not yet sent, so a batch pool is sized for its deadline before the lines reach it.
TOLLGATE_AUTOSCALE_BACKLOG_SOURCES = ["batches.services.pool_backlog"]
# A pool whose policy names a Kubernetes Deployment gets its desired count patched there; as the API server's
# dry run (nothing persisted) unless this is false. The kubeconfig used outside a cluster (empty: the default).
TOLLGATE_AUTOSCALE_KUBERNETES_DRY_RUN = env_bool("TOLLGATE_AUTOSCALE_KUBERNETES_DRY_RUN", True)
TOLLGATE_KUBECONFIG = env("TOLLGATE_KUBECONFIG", "")
CELERY_BEAT_SCHEDULE["autoscale-recommend"] = {"task": "autoscaling.tasks.recommend_replicas",
                                               "schedule": TOLLGATE_AUTOSCALE_INTERVAL_S}
# Alert email. Without EMAIL_HOST alerts are printed to the console (embedded default).
EMAIL_HOST = env("EMAIL_HOST", "")
EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST
                    else "django.core.mail.backends.console.EmailBackend")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "tollgate@localhost")
