# kafka-trace-proxy sidecar image: build wheels in one stage, run as non-root in a slim one.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[fast]"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ktp
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "kafka-trace-proxy[fast]" \
    && rm -rf /wheels
COPY config/kafka-trace-proxy.env /etc/kafka-trace-proxy/kafka-trace-proxy.env
USER 10001
# Variables given to `docker run --env-file` (or Kubernetes envFrom) override the baked-in file.
EXPOSE 9092 9644
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9644/healthz', timeout=2)"]
ENTRYPOINT ["kafka-trace-proxy"]
CMD ["--env-file", "/etc/kafka-trace-proxy/kafka-trace-proxy.env"]
