"""comicgen settings: one module, every deployment knob read from the environment.

The defaults are the dev stack that `make dev` starts (PostgreSQL on 127.0.0.1:5433, Redis on
127.0.0.1:6380, the RunPod emulator on 127.0.0.1:8787), so `python manage.py ...` in a checkout
talks to it with no environment set. A bad value stops the process at start (see env.py).
"""

from __future__ import annotations

import socket
from decimal import Decimal
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from comicgen.env import (
    env_bool,
    env_decimal,
    env_float,
    env_int,
    env_json,
    env_list,
    env_rate,
    env_secret_key,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
# SECRET_KEY signs sessions, CSRF tokens and every RunPod webhook URL (webhooks.webhook_token):
# whoever knows it can forge a job's result. So there is no built-in key. It comes from the
# SECRET_KEY variable, else from the file SECRET_KEY_FILE names (a Docker or Kubernetes secret),
# else from .local/secret_key, a random key that `make dev` and `make test` write once per
# checkout: that is how `python manage.py ...` in a checkout works with no environment set. With
# DEBUG off, a missing, short (under 50 characters, as check --deploy asks) or placeholder key
# stops the process here with a message saying how to set one.
SECRET_KEY = env_secret_key(
    "SECRET_KEY", default_file=BASE_DIR / ".local" / "secret_key", allow_weak=DEBUG
)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# No "daphne" app: it only makes `manage.py runserver` serve ASGI, and loading it loads Twisted
# and Autobahn, 41 MB in every web and worker process. The stack serves with uvicorn (Procfile,
# compose); the tests' web process runs the daphne command, which needs no app.
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as static files: the docs load offline
    "channels",
    "django_htmx",
    "template_partials",
    "comicgen",
    "budgets",
    "batches",
    "monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "comicgen.urls"
ASGI_APPLICATION = "comicgen.asgi.application"
WSGI_APPLICATION = "comicgen.wsgi.application"

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
                "batches.context_processors.budget",
            ],
        },
    },
]

DATABASE_URL = env_url(
    "DATABASE_URL",
    "postgres://comicgen:comicgen@127.0.0.1:5433/comicgen",
    schemes=("postgres", "postgresql"),
)
# A connection pool per process (psycopg's, through Django): under ASGI every request runs its
# sync code in a thread of its own, so per-thread persistent connections were never reused and
# every request, RunPod's webhooks included, paid for a new PostgreSQL connection (a SCRAM
# handshake on both sides). The pool lends connections to any thread; Celery's threads share it
# too. With conn_health_checks, Django has the pool check a connection before lending it, so
# one PostgreSQL dropped while it sat idle (a restart) is replaced, not handed out.
# COMICGEN_DB_POOL_SIZE bounds one process's connections; 0 turns pooling off (then each
# thread keeps its connection for a minute).
COMICGEN_DB_POOL_SIZE = env_int("COMICGEN_DB_POOL_SIZE", 20, minimum=0, maximum=500)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL, conn_max_age=0 if COMICGEN_DB_POOL_SIZE else 60, conn_health_checks=True
    )
}
if COMICGEN_DB_POOL_SIZE:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": COMICGEN_DB_POOL_SIZE,
        # A thread that finds every connection lent waits this long before an error.
        "timeout": 30,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6380/0", schemes=("redis", "rediss"))

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / ".local" / "staticfiles")))
# Panels are private: no route serves MEDIA_ROOT (MEDIA_URL leads nowhere). batches.panels
# serves each file at /panels/<id>.png after checking access, with these knobs:
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / ".local" / "media")))
# How long a signed image_url (?sig=...) works without a login, in seconds.
COMICGEN_PANEL_URL_MAX_AGE = env_int(
    "COMICGEN_PANEL_URL_MAX_AGE", 3600, minimum=60, maximum=7 * 24 * 3600
)
# Who sends the bytes once access is checked: empty, Django streams the file (dev stack, uvicorn
# alone); `X-Accel-Redirect`, nginx, from an `internal` location at COMICGEN_SENDFILE_PREFIX
# aliased to MEDIA_ROOT; `X-Sendfile`, Apache's mod_xsendfile (or lighttpd), by file path.
_SENDFILE_HEADERS = {"": "", "x-accel-redirect": "X-Accel-Redirect", "x-sendfile": "X-Sendfile"}
_sendfile = env_str("COMICGEN_SENDFILE_HEADER", "")
if _sendfile.lower() not in _SENDFILE_HEADERS:
    raise ImproperlyConfigured(
        f"COMICGEN_SENDFILE_HEADER={_sendfile!r}: expected empty, X-Accel-Redirect or X-Sendfile"
    )
COMICGEN_SENDFILE_HEADER = _SENDFILE_HEADERS[_sendfile.lower()]
COMICGEN_SENDFILE_PREFIX = env_str("COMICGEN_SENDFILE_PREFIX", "/protected-media/")
if not (COMICGEN_SENDFILE_PREFIX.startswith("/") and COMICGEN_SENDFILE_PREFIX.endswith("/")):
    raise ImproperlyConfigured(
        f"COMICGEN_SENDFILE_PREFIX={COMICGEN_SENDFILE_PREFIX!r}: expected a path such as "
        "/protected-media/ (starting and ending with /)"
    )
# Static files (CSS, htmx) likewise: uvicorn serves no files of its own, so asgi.py wraps the
# app in Django's static handler when this is on. Behind a real web server, turn it off.
COMICGEN_SERVE_STATIC = env_bool("COMICGEN_SERVE_STATIC", True)

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # A watcher that falls behind (a busy web process) gets its events late rather than
        # not at all: messages wait up to two minutes before the layer drops them.
        # No socket timeout on the layer's connections. redis-py 8's default (5 s) equals the
        # layer's 5 s BZPOPMIN: under load the answer came a hair after the socket gave up and
        # the WebSocket consumer died with it. And with any socket timeout, redis-py sends each
        # command through asyncio.wait_for, which on Python 3.11 drops a cancel that arrives
        # just as the send completes: a closed socket's consumer then kept its receive task,
        # and a Redis connection, looping on BZPOPMIN for ever. BZPOPMIN's own timeout bounds
        # each read; TCP keepalive finds a Redis that vanished without closing the connection.
        "CONFIG": {
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": None,
                    "socket_connect_timeout": 5,
                    "socket_keepalive": True,
                    "socket_keepalive_options": {
                        socket.TCP_KEEPIDLE: 30,
                        socket.TCP_KEEPINTVL: 10,
                        socket.TCP_KEEPCNT: 3,
                    },
                }
            ],
            "capacity": 1000,
            "expiry": 120,
        },
    }
}

# Celery: Redis broker, results unused (PostgreSQL holds the truth) except for chord bookkeeping.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = False
CELERY_RESULT_EXPIRES = 24 * 3600
# One result backend per process, shared by its threads (redis-py's client is thread-safe):
# Celery otherwise builds one per thread, and under ASGI every request runs in a new thread,
# so each submit built a backend (a Redis connection pool, a read of redis-py's package
# metadata) just to send the enqueue task.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# With a Redis broker, a task whose countdown or ETA exceeds the visibility timeout is delivered
# again (the broker takes the unacknowledged message for lost); every retry cap in
# batches/tasks.py stays well below this.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=300)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_TASK_DEFAULT_QUEUE = "normal"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # `Token <key>` and `Bearer <key>`, the same tokens (comicgen/authentication.py).
        "comicgen.authentication.TokenAuthentication",
        "comicgen.authentication.BearerAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "comicgen.errors.api_exception_handler",
    # JSON only, read with a byte cap, a nesting bound and a digit bound (comicgen/parsers.py).
    "DEFAULT_PARSER_CLASSES": ["comicgen.parsers.BoundedJSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # How throttles tell clients apart when no user is logged in (the token endpoint): 0 takes
    # the connection's address and ignores X-Forwarded-For, which any client can forge; behind
    # N proxies that each append the address they saw (Caddy in docker-compose.yml: 1), the
    # Nth address from the end, which the nearest proxy wrote.
    "NUM_PROXIES": env_int("COMICGEN_PROXY_COUNT", 0, minimum=0, maximum=10),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "comicgen API",
    "DESCRIPTION": (
        "Submit chapters of comic panels, follow them, download the images.\n\n"
        "**Authentication.** Every call but `auth/token/` and `health/` needs your API token "
        "(shown on the *API token* page, or from `POST /api/v1/auth/token/` with your username "
        "and password) as `Authorization: Token <key>` or `Authorization: Bearer <key>`; the "
        "browser's session works too.\n\n"
        "**Live updates.** `ws(s)://<host>/ws/batches/<id>/` sends `batch.snapshot` on connect, "
        "then `image.updated` and `batch.updated` events, each with a per-batch `seq` that only "
        "grows. Authenticate with the same `Authorization` header, or `?token=<key>` where the "
        "client cannot set headers (browsers); send an `Origin` header naming this server. A "
        "missing or wrong token closes the socket with 4401 (the handshake is refused), another "
        "user's batch with 4403. The events' `image_url` is a path on this server (the REST "
        "answers give it absolute).\n\n"
        '**Errors** are JSON `{"code", "detail"}` on every `/api/v1/` path, unknown '
        "paths (404 `not_found`) and wrong methods (405 `method_not_allowed`) included."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs pages' JavaScript and CSS come from drf-spectacular-sidecar's static files, not a
    # CDN: /api/v1/docs/ and /api/v1/redoc/ work with no internet access, pinned to the version
    # installed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Batches and images both have a `status`: give each choice set its own schema name.
    "ENUM_NAME_OVERRIDES": {
        "BatchStatusEnum": "batches.models.BatchStatus",
        "ImageStatusEnum": "batches.models.ImageStatus",
    },
}
# Refuse oversized bodies before parsing them: 500 prompts of 2,000 characters fit in 2 MB.
# Django applies it to forms and, through request.body, to the API's JSON parser.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2 * 1024 * 1024, minimum=1024)
# Per user, on the calls that cost work (pricing, reserving, enqueueing): requests per
# s/min/hour/day. Read at each request (batches/api/throttles.py), counted in the shared cache.
COMICGEN_THROTTLE_SUBMIT = env_rate("COMICGEN_THROTTLE_SUBMIT", "30/min")
COMICGEN_THROTTLE_ESTIMATE = env_rate("COMICGEN_THROTTLE_ESTIMATE", "120/min")
# Per client address, one count for POST /api/v1/auth/token/, /accounts/login/ and
# /admin/login/ (comicgen/login_throttle.py): password guessing.
COMICGEN_THROTTLE_LOGIN = env_rate("COMICGEN_THROTTLE_LOGIN", "10/min")

# Throttle counters (and any other cache use) live in Redis so every web process shares them.
# The prefix keeps them apart from Celery's and Channels' keys in the same database.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "comicgen:cache",
        # One connection pool per process, not per request's thread (comicgen/cache.py).
        "OPTIONS": {"pool_class": "comicgen.cache.SharedConnectionPool"},
    }
}

# RunPod Serverless. The defaults point at the local emulator of the dev stack.
RUNPOD_BASE_URL = env_url(
    "RUNPOD_BASE_URL", "http://127.0.0.1:8787/v2", schemes=("http", "https")
).rstrip("/")
RUNPOD_ENDPOINT_ID = env_str("RUNPOD_ENDPOINT_ID", "comicgen-local")
RUNPOD_API_KEY = env_str("RUNPOD_API_KEY", "local-dev-key")
# A ceiling: the limiter keeps in flight what the endpoint's /health says it can take
# (batches/capacity.py), never more than this.
RUNPOD_MAX_IN_FLIGHT = env_int("RUNPOD_MAX_IN_FLIGHT", 1000, minimum=1)
# The endpoint's queue-delay scaler setting (RunPod's default: 4 s): while work waits in
# comicgen, jobs are left in RunPod's queue this long so the endpoint grows. 0: it does not scale.
RUNPOD_SCALER_QUEUE_DELAY = env_float("RUNPOD_SCALER_QUEUE_DELAY", 4.0, minimum=0)
RUNPOD_POLL_INTERVAL = env_float("RUNPOD_POLL_INTERVAL", 1.0, minimum=0.05)
# With webhooks on, /status is polled only this often per job, in case a webhook was lost.
RUNPOD_WEBHOOK_POLL_INTERVAL = env_float("RUNPOD_WEBHOOK_POLL_INTERVAL", 10.0, minimum=0.05)
RUNPOD_EXECUTION_TIMEOUT_MS = env_int("RUNPOD_EXECUTION_TIMEOUT_MS", 600_000, minimum=1000)
RUNPOD_TTL_MS = env_int("RUNPOD_TTL_MS", 3_600_000, minimum=60_000)
# A worker may answer with an image URL instead of base64 (worker-sdxl uploads to a bucket when
# one is configured). Such a URL is fetched only from these hosts (a name matches itself and its
# subdomains), over https, without following redirects, up to this many bytes: anything else in
# a job's output is refused, so a compromised or misconfigured worker cannot make comicgen fetch
# from the internal network.
RUNPOD_OUTPUT_URL_HOSTS = env_list("RUNPOD_OUTPUT_URL_HOSTS", ["runpod.io", "runpod.ai"])
RUNPOD_OUTPUT_MAX_BYTES = env_int("RUNPOD_OUTPUT_MAX_BYTES", 32 * 1024 * 1024, minimum=1024)
# Where RunPod can reach this app for webhooks (e.g. https://comicgen.example.com). Empty means
# no webhooks: chunks follow their jobs by /status polling alone.
COMICGEN_PUBLIC_URL = env_str("COMICGEN_PUBLIC_URL", "").rstrip("/")
# The largest webhook body read (only after its URL token matched). A job's output holds one
# PNG as base64: the largest panel the API allows (2048 x 2048) as an incompressible RGB PNG is
# 12.6 MB, 16.8 MB in base64; 20 MiB leaves room for the JSON around it.
COMICGEN_WEBHOOK_MAX_BYTES = env_int(
    "COMICGEN_WEBHOOK_MAX_BYTES", 20 * 1024 * 1024, minimum=64 * 1024
)

COMICGEN_CHUNK_SIZE = env_int("COMICGEN_CHUNK_SIZE", 10, minimum=1, maximum=500)
COMICGEN_MAX_ATTEMPTS = env_int("COMICGEN_MAX_ATTEMPTS", 4, minimum=1, maximum=20)
COMICGEN_MAX_BATCH_IMAGES = env_int("COMICGEN_MAX_BATCH_IMAGES", 500, minimum=1, maximum=20_000)
COMICGEN_RETRY_BASE_DELAY = env_float("COMICGEN_RETRY_BASE_DELAY", 2.0, minimum=0)
COMICGEN_RETRY_MAX_DELAY = env_float("COMICGEN_RETRY_MAX_DELAY", 60.0, minimum=0)
COMICGEN_DEFAULT_MONTHLY_BUDGET = env_decimal(
    "COMICGEN_DEFAULT_MONTHLY_BUDGET", "25.00", minimum=Decimal("0")
)
COMICGEN_CURRENCY = env_str("COMICGEN_CURRENCY", "USD")
# How long a chunk's lease and an in-flight slot outlive a worker that died holding them.
COMICGEN_CHUNK_LEASE_SECONDS = env_int("COMICGEN_CHUNK_LEASE_SECONDS", 20, minimum=2)
COMICGEN_SLOT_LEASE_SECONDS = env_int("COMICGEN_SLOT_LEASE_SECONDS", 60, minimum=2)
# A job whose /run answer was lost with its worker is adopted when its webhook reports; it is
# submitted again only if no webhook came for this long.
COMICGEN_ORPHAN_GRACE_SECONDS = env_float("COMICGEN_ORPHAN_GRACE_SECONDS", 120.0, minimum=1)
COMICGEN_SWEEP_INTERVAL = env_float("COMICGEN_SWEEP_INTERVAL", 30.0, minimum=1)
# The bearer token a Prometheus scraper sends to GET /metrics (monitoring/views.py). Empty: only
# loopback callers and staff sessions may read it.
COMICGEN_METRICS_TOKEN = env_str("COMICGEN_METRICS_TOKEN", "")

# Extra or changed models for budgets/pricing.py, as JSON:
# {"my-model": {"gpu": "a100", "overhead_seconds": 1.0, "seconds_per_megapixel_step": 0.1}}
COMICGEN_MODEL_CATALOGUE = env_json("COMICGEN_MODEL_CATALOGUE", {})


def _runpod_endpoints() -> dict[str, str] | None:
    """RUNPOD_ENDPOINTS: which RunPod endpoint renders each model (an endpoint runs one worker
    image, so one model), as JSON `{"sdxl": "abc123", "flux-dev": "def456"}` or
    `sdxl=abc123,flux-dev=def456`. Only the models named are offered. Unset or empty: every
    catalogue model on RUNPOD_ENDPOINT_ID (one endpoint, as in the tests)."""
    # Imported here: the catalogue's names are what a typo is checked against.
    from budgets.pricing import DEFAULT_CATALOGUE, parse_model_endpoints

    text = env_str("RUNPOD_ENDPOINTS", "")
    if not text:
        return None
    try:
        routes = parse_model_endpoints(
            "RUNPOD_ENDPOINTS", text, [*DEFAULT_CATALOGUE, *COMICGEN_MODEL_CATALOGUE]
        )
    except ValueError as error:
        raise ImproperlyConfigured(str(error)) from None
    if not routes:
        raise ImproperlyConfigured("RUNPOD_ENDPOINTS names no model: unset it, or map one")
    return routes


RUNPOD_ENDPOINTS = _runpod_endpoints()

# Authors' tools (batches/outputs.py, batches/authoring.py, batches/retention.py).
# The quality gate: a completed output of one flat colour (what SDXL's safety checker returns)
# fails its attempt as "blank image" and the panel is retried with a new seed. An image whose
# every colour band varies by less than this standard deviation (0-255 levels) counts as blank.
COMICGEN_QUALITY_GATE = env_bool("COMICGEN_QUALITY_GATE", True)
COMICGEN_BLANK_THRESHOLD = env_float("COMICGEN_BLANK_THRESHOLD", 1.0, minimum=0)
# Panel files of batches finished longer ago than this are removed (rows, costs and the ledger
# stay); the pages and the API then say the images expired.
COMICGEN_RETENTION_DAYS = env_int("COMICGEN_RETENTION_DAYS", 30, minimum=1)
COMICGEN_RETENTION_INTERVAL = env_float("COMICGEN_RETENTION_INTERVAL", 3600.0, minimum=1)

CELERY_BEAT_SCHEDULE = {
    "sweep-batches": {
        "task": "batches.tasks.sweep_batches_task",
        "schedule": COMICGEN_SWEEP_INTERVAL,
    },
    "prune-panels": {
        "task": "batches.tasks.prune_panels_task",
        "schedule": COMICGEN_RETENTION_INTERVAL,
    },
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # A webhook URL's path carries its token (RunPod signs nothing): Django logs every 4xx with
    # its path, so the token is redacted on Django's request logger (for every handler, Django's
    # own included) and on the console handler (for any other logger). Uvicorn's access log,
    # which would print every path, is off (Procfile, docker-compose.yml: --no-access-log).
    "filters": {"webhook_tokens": {"()": "comicgen.log_redaction.RedactWebhookTokens"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["webhook_tokens"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "django.request": {"filters": ["webhook_tokens"]},
    },
}

# HTTPS. Off by default so the dev stack and the tests run on plain http://127.0.0.1; a
# deployment turns them on (docker-compose.yml does, and `manage.py check --deploy` is clean
# with its settings). BEHIND_TLS_PROXY trusts the proxy's X-Forwarded-Proto: set it only when
# the app is reachable through that proxy alone.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
