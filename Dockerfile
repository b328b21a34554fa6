# Music emotion recognition service: the serving install (`.[serve]`, no torch, no compilers) in a venv,
# the default model baked in under /opt/mer/models (mount a volume there, or set MER_MODEL_PATH, to
# serve another one). Classic-builder syntax only (no RUN --mount, COPY --chmod or heredocs), so the
# plain Docker engine builds it without BuildKit.
#
#   docker build -t music-emotion-service .
#   docker run --rm -p 127.0.0.1:8000:8000 music-emotion-service
#   docker build --build-arg ONNXRUNTIME=gpu -t music-emotion-service:gpu .   # onnxruntime-gpu
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: resolves and installs the Python dependencies into /opt/venv ----------------------------
FROM ${PYTHON_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# cpu: the `serve` extra as it is (onnxruntime); gpu: the `gpu` extra's onnxruntime-gpu replaces it
# (both wheels install the same `onnxruntime` package, so exactly one of them may be present), with
# NVIDIA's CUDA and cuDNN runtime wheels so the slim base needs no CUDA install; the host needs only
# the NVIDIA driver and the NVIDIA Container Toolkit.
ARG ONNXRUNTIME=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
# Dependencies first, from pyproject.toml and empty packages in a folder of their own (so no stale
# build/ output of the empty packages can shadow the real ones): editing the code reuses this layer.
COPY pyproject.toml /tmp/deps/
RUN mkdir /tmp/deps/app /tmp/deps/model_export \
 && touch /tmp/deps/README.md /tmp/deps/app/__init__.py /tmp/deps/model_export/__init__.py \
 && /opt/venv/bin/pip install --no-cache-dir "/tmp/deps[serve]" \
 && if [ "$ONNXRUNTIME" = "gpu" ]; then \
      /opt/venv/bin/pip uninstall --yes onnxruntime \
      && /opt/venv/bin/pip install --no-cache-dir "/tmp/deps[gpu]" "onnxruntime-gpu[cuda,cudnn]"; \
    elif [ "$ONNXRUNTIME" != "cpu" ]; then \
      echo "ONNXRUNTIME must be cpu or gpu, not $ONNXRUNTIME" >&2; exit 1; \
    fi \
 && rm -rf /tmp/deps
# The real sources replace the empty packages (no dependency changes, so nothing is downloaded).
WORKDIR /src
COPY README.md LICENSE pyproject.toml ./
COPY app/ app/
COPY model_export/ model_export/
# Then drop what serving never needs: pip itself and the test suites and C headers of the largest
# dependencies (about 75 MB; pandas and pyarrow come in through opensmile -> audformat, which imports
# them, so they stay; mer-score writes its Parquet with pyarrow). -P: import the installed package, not
# ./app, to check what the runtime gets (the service and the batch job).
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && rm -rf "$site"/pandas/tests "$site"/pyarrow/tests "$site"/pyarrow/include "$site"/numpy/*/tests \
 && /opt/venv/bin/python -P -c "import app.main, app.batch.cli, onnxruntime as o; print(o.__version__, o.get_available_providers())"

# --- runtime: the base image, the venv and the model; no build tools, not root -------------------------
FROM ${PYTHON_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="music-emotion-service" \
      org.opencontainers.image.description="Per-500 ms arousal/valence of music clips over HTTP" \
      org.opencontainers.image.licenses="MIT (code); openSMILE is research-only, see README"
RUN groupadd --system --gid 10001 mer \
 && useradd --system --uid 10001 --gid mer --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mer
COPY --from=builder /opt/venv /opt/venv
# GPU build only: let the loader find the CUDA/cuDNN libraries of NVIDIA's wheels (no-op for the CPU
# build, which has none).
RUN dirs="$(find /opt/venv -path '*/site-packages/nvidia/*' -name 'lib*.so*' -printf '%h\n' | sort -u)" \
 && if [ -n "$dirs" ]; then echo "$dirs" > /etc/ld.so.conf.d/nvidia-wheels.conf && ldconfig; fi
# The default model; replace it with a volume on /opt/mer/models or point MER_MODEL_PATH elsewhere.
COPY models/ /opt/mer/models/
WORKDIR /opt/mer
# MER_MODEL_PATH is explicit: the package is installed (not run from a checkout), so its built-in
# default (next to the source tree) would point into site-packages. HOME=/tmp: libraries that want a
# writable home find one even with a read-only root filesystem (mount a tmpfs on /tmp there).
# MALLOC_ARENA_MAX=2: fewer glibc heaps for the worker threads, so less memory stays held after peaks.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MALLOC_ARENA_MAX=2 \
    MER_MODEL_PATH=/opt/mer/models/default.onnx
USER 10001:10001
EXPOSE 8000
# Readiness, not liveness: "healthy" means the model is loaded and warmed up (503 raises, exit 1).
# Python's urllib because the slim base has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# Settings come from MER_* environment variables (see README, Configuration).
# Same flags as `make run`: the JSON-shaped 400s of the HTTP parser, and SIGTERM ends the process within
# 10 s (+ the lifespan's drain) even with a client stalled mid-body (docker's default grace is 10 s;
# compose gives 30 s).
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000", \
     "--http", "app.http.protocols:JsonErrorProtocol", "--timeout-graceful-shutdown", "10"]
