# recgate service image.
#
#   docker build -t recgate .
#   docker run --rm -v recgate-data:/app/var recgate recgate migrate    # schema first, as its own step
#   docker run -d -p 127.0.0.1:8000:8000 -v recgate-data:/app/var \
#     -e RECGATE_GENERIC_WEBHOOK_SECRET=whsec_... recgate
#
# Migrations are never run by the serving container: several replicas must not race to migrate.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The service runs as this unprivileged user (see USER below).
RUN groupadd --system --gid 10001 recgate \
    && useradd --system --uid 10001 --gid recgate --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin recgate

# Dependencies first, in their own layer, so a code change does not reinstall them.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself; the source tree (and setuptools' build/ and egg-info) is removed after.
COPY app ./app
RUN pip install --no-cache-dir . \
    && cd / && rm -rf /src

# The migrations are read at run time by `recgate migrate`. Code and migrations stay root-owned
# (read-only for the service); only var/ (SQLite database, local media) is writable.
WORKDIR /app
COPY alembic.ini ./
COPY alembic ./alembic
RUN mkdir -p /app/var/media && chown -R recgate:recgate /app/var

# Listen on every interface inside the container; publish the port deliberately.
# Production mode refuses placeholder secrets; the simulator is off unless asked for.
ENV RECGATE_HOST=0.0.0.0 \
    RECGATE_PORT=8000 \
    RECGATE_ENV=production \
    RECGATE_SIM_ENABLED=false \
    RECGATE_LOG_FORMAT=json \
    RECGATE_ALEMBIC_DIR=/app/alembic

USER 10001:10001
EXPOSE 8000

# No curl in the slim image: probe /livez with the standard library. urlopen raises (exit 1)
# on a refused connection, a timeout or a non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('RECGATE_PORT', '8000'), timeout=3)"]

CMD ["recgate", "serve"]
