# keystile as a container: the wheel `python -m build` makes, on a slim Python, run by an unprivileged user.
# docs/DEPLOYMENT.md explains the settings; tests/test_deployment.py checks that this file's command, health check and
# settings are the ones the test suite runs (Docker itself does not run in CI).

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --disable-pip-version-check "build>=1,<2"
COPY . .
# The sdist, then the wheel built from it: the same distributions tests/test_packaging.py builds and installs.
RUN python -m build --outdir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 keystile \
    && useradd --system --uid 10001 --gid keystile --home-dir /var/lib/keystile --create-home \
        --shell /usr/sbin/nologin keystile
COPY --from=build /dist/*.whl /tmp/
RUN pip install /tmp/keystile-*.whl && rm /tmp/keystile-*.whl

USER keystile
WORKDIR /var/lib/keystile
# Without KEYSTILE_DATABASE_URL the image keeps SQLite and its generated secret here: mount a volume on it.
# For production set KEYSTILE_DATABASE_URL (PostgreSQL), KEYSTILE_REDIS_URL and KEYSTILE_SECRET_KEY (compose.yaml).
ENV KEYSTILE_DATABASE_URL=sqlite+aiosqlite:////var/lib/keystile/keystile.db
VOLUME ["/var/lib/keystile"]
EXPOSE 8000

# Liveness only: /healthz answers while the process serves. /readyz also checks the database and Redis.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# `keystile serve` migrates, then serves one worker; run more containers (or --workers N with Redis) to scale.
ENTRYPOINT ["keystile"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
