# syntax=docker/dockerfile:1
# CPU image of the mplstm inference service: ONNX Runtime (CPU), no torch, no compiler.
#
#   docker build -t mplstm-serve:cpu .
#   docker run --rm -p 8000:8000 -p 8001:8001 mplstm-serve:cpu
#
# Serves the demo packages baked in at /models; mount another repository over it with
# `-v $PWD/models:/models:ro`. Settings: MPLSTM_* variables (docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# -- builder: every wheel the service needs, ours included -----------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mplstm ./mplstm
RUN python -m pip wheel --wheel-dir /wheels ".[serve]"

# -- runtime ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MPLSTM_PORT=8000 MPLSTM_GRPC_PORT=8001 MPLSTM_BACKEND=onnxruntime MPLSTM_DEVICE=cpu
# The wheels come in through a bind mount, so none of them stays in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels "mplstm-serve[serve]"
# A fixed numeric uid: Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN groupadd --system --gid 10001 mplstm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/mplstm --create-home mplstm \
    && install -d -o 10001 -g 10001 /scores /data/gallery
COPY deploy/healthcheck.py /usr/local/lib/mplstm/healthcheck.py
# The demo packages (and their example clips, for `mplstm score` demos), read-only.
COPY models/ /models/
USER 10001:10001
WORKDIR /home/mplstm
# 8000: HTTP (/v1, /v2, /metrics); 8001: the Open Inference Protocol over gRPC.
EXPOSE 8000 8001
# Model load and warm-up happen before the port opens: the start period covers them.
# The check reads MPLSTM_PORT, so move the port with that variable, not with --port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/mplstm/healthcheck.py"]
ENTRYPOINT ["mplstm", "serve"]
CMD ["--host", "0.0.0.0", "--models", "/models"]
