# recgate service image.
#
#   docker build -t recgate .          # or: podman build --format docker -t recgate .
#   docker run --rm -v recgate-data:/app/var recgate recgate migrate    # schema first, as its own step
#   docker run -d -p 127.0.0.1:8000:8000 -v recgate-data:/app/var \
#     -e RECGATE_GENERIC_WEBHOOK_SECRET=whsec_... -e RECGATE_AUDIT_KEY=whsec_... recgate
#
# Migrations are never run by the serving container: several replicas must not race to migrate.
#
# The base is a build argument: the public python:3.11-slim by default, or any image with
# python3 (>= 3.11) and its venv module, such as the Debian base scripts/build-base-image.sh
# makes where no registry can be reached (docs/container.md):
#
#   podman build --build-arg BASE_IMAGE=localhost/recgate-base:bookworm -t recgate .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Everything is installed into a virtual environment of its own: the slim image's pip lives in
# /usr/local, Debian's python3 has no pip at all (and refuses to install into the system
# Python), and both bases have `python3 -m venv`.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The service runs as this unprivileged user (see USER below).
RUN groupadd --system --gid 10001 recgate \
    && useradd --system --uid 10001 --gid recgate --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin recgate \
    && python3 -m venv /opt/venv

# Build-time only, for pip: the index it installs from and the CA bundle it trusts. Neither is
# kept in the image's environment; empty (the default), pip uses PyPI and its own bundle.
# Behind a proxy that re-signs TLS, mount the host's bundle read-only over the image's and
# point PIP_CERT at it (the mount leaves nothing in the image):
#   podman build -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
#     --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt ...
# Build arguments are recorded in the image history: an index URL that carries credentials
# belongs in a pip.conf mounted at build time (-v ./pip.conf:/etc/pip.conf:ro, not committed).
ARG PIP_INDEX_URL=
ARG PIP_CERT=

# Dependencies first, in their own layer, so a code change does not reinstall them.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself; the source tree (and setuptools' build/ and egg-info) is removed after.
COPY app ./app
RUN pip install . \
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

# No curl in either base: probe /livez with the standard library. urlopen raises (exit 1)
# on a refused connection, a timeout or a non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('RECGATE_PORT', '8000'), timeout=3)"]

CMD ["recgate", "serve"]
