# capi-gateway: one process, one SQLite outbox on a volume; non-root; runs with a
# read-only root filesystem (everything it writes is under /data).
#
#   docker build -t capi-gateway .
#   docker run --read-only --tmpfs /tmp -v capi-data:/data -p 8080:8080 \
#     -e META_PIXEL_ID=1234567890 -e META_ACCESS_TOKEN=EAAB... \
#     capi-gateway --upstream http://site:3000
#
# Arguments after the image name go to `capi-gateway serve`. Other commands:
#   docker exec <container> capi-gateway doctor      (or queue stats, send-test-event, ...)
# Set `listen` and `prefix` through CAPIGW_LISTEN / CAPIGW_PREFIX (not flags) so the
# health check follows them.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# A venv at the same path as in the final image (its scripts point at /usr/local/bin/python,
# identical in both stages); bytecode is compiled here, never at run time.
RUN python -m venv /opt/capi-gateway \
    && /opt/capi-gateway/bin/pip install '.[uvloop]' \
    && /opt/capi-gateway/bin/pip uninstall --yes pip setuptools
COPY deploy/healthcheck.py /opt/capi-gateway/healthcheck.py

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 capi \
    && useradd --system --uid 10001 --gid capi --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin capi \
    && mkdir /data && chown capi:capi /data && chmod 0700 /data
COPY --from=build /opt/capi-gateway /opt/capi-gateway
ENV PATH=/opt/capi-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CAPIGW_BUFFER=/data/capi-gateway.db \
    CAPIGW_LISTEN=0.0.0.0:8080
USER 10001:10001
WORKDIR /data
# The outbox, its WAL and its key: keep them on a volume that outlives the container.
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "/opt/capi-gateway/healthcheck.py"]
ENTRYPOINT ["capi-gateway", "serve"]
