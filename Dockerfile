# kafka-trace-proxy sidecar image: build wheels in one stage, run as non-root in a slim one.
# The final stage has no compiler, no pip cache and no wheels; the proxy runs as uid 10001.
FROM python:3.11-slim-bookworm AS build
# A C compiler for the compiled hot loops (proxy/codec/_speedups.c); it stays in this stage.
# Unpinned on purpose: the toolchain of the base image's Debian release, whatever its patch level.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
# The extension is optional to pip (the wheel builds without it); the image must not lack it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[fast]" \
    && python -c "import glob, sys, zipfile; \
names = [n for w in glob.glob('/wheels/kafka_trace_proxy-*.whl') for n in zipfile.ZipFile(w).namelist()]; \
sys.exit(0 if any(n.startswith('proxy/codec/_speedups.') and n.endswith('.so') for n in names) \
else 'no compiled proxy/codec/_speedups in the wheel')"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 ktp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ktp
# The wheels built above (the proxy and its dependencies), bind-mounted (BuildKit) so that no
# layer keeps them: install exactly those files, from no index.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl
COPY config/kafka-trace-proxy.env /etc/kafka-trace-proxy/kafka-trace-proxy.env
USER 10001:10001
# Variables given to `docker run --env-file` (or Kubernetes envFrom) override the baked-in file.
EXPOSE 9092 9644
# Assumes the admin endpoint on port 9644 (the default; 0.0.0.0:9644 also answers on 127.0.0.1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9644/healthz', timeout=2)"]
ENTRYPOINT ["kafka-trace-proxy"]
CMD ["--env-file", "/etc/kafka-trace-proxy/kafka-trace-proxy.env"]
