# capi-gateway: one process, one SQLite file on a volume.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && useradd --system --home /data capi \
    && mkdir -p /data && chown capi /data

USER capi
VOLUME ["/data"]
EXPOSE 8080
ENV CAPIGW_BUFFER=/data/capi-gateway.db \
    CAPIGW_LISTEN=0.0.0.0:8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/_capi/health', timeout=2)" || exit 1
ENTRYPOINT ["capi-gateway"]
CMD ["serve"]
