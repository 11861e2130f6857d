# The comicgen web app, Celery worker and beat share this image (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY comicgen ./comicgen
COPY batches ./batches
COPY budgets ./budgets
COPY monitoring ./monitoring
COPY worker ./worker
COPY comicgen_cli ./comicgen_cli
RUN pip install --no-cache-dir .

COPY manage.py Procfile ./
COPY scripts ./scripts
COPY templates ./templates
COPY static ./static
# Settings refuse to load without a strong SECRET_KEY: collectstatic gets a throwaway one. The
# image holds no key; each deployment sets its own at run time (docker-compose.yml requires it).
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    STATIC_ROOT=/app/staticfiles python manage.py collectstatic --no-input -v 0

RUN useradd --system --uid 1000 comicgen && mkdir -p /data/media && chown comicgen /data/media
USER comicgen
ENV STATIC_ROOT=/app/staticfiles MEDIA_ROOT=/data/media
EXPOSE 8000
# What docker-compose.yml's web runs. No access log: a path can carry a secret (a webhook's
# token, a WebSocket's ?token=), and an access log prints every path.
CMD ["uvicorn", "comicgen.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--lifespan", "off", "--no-access-log", "--no-proxy-headers", "--log-level", "warning", "--timeout-graceful-shutdown", "5"]
