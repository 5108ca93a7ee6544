# The runner image of ONE model family. What differs between families is only their exact pins, in
# images/<FAMILY>/requirements.txt (families need incompatible transformers versions); this file is shared.
# Build from the repository root (the context must be the repository):
#   docker build -f images/runner.Dockerfile --build-arg FAMILY=blip2 -t vlm-ablation/blip2:latest .
# (or: make images). FAMILY is one of runner/registry.py's families.
# BASE_IMAGE must provide python (3.11+) and torch; the default is the public CUDA PyTorch runtime image.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}
ARG FAMILY

# PIP_NO_INDEX=1 installs only from images/wheelhouse/ (offline builds, CI); 0 also reads the package index.
ARG PIP_NO_INDEX=0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    HOME=/tmp
LABEL org.opencontainers.image.title="vlm-ablation/${FAMILY}" \
      io.vlm-ablation.family="${FAMILY}"
USER root
COPY images/wheelhouse/ /tmp/wheelhouse/
COPY images/${FAMILY}/requirements.txt /tmp/requirements.txt
COPY pyproject.toml /src/
COPY contract /src/contract
COPY runner /src/runner
# The orchestrator package rides along for its fetch step (python -m orchestrator.hub_fetch needs only huggingface_hub).
COPY orchestrator /src/orchestrator
RUN test -n "${FAMILY}" || { echo "build with --build-arg FAMILY=<family>"; exit 1; } \
    && python -m pip install --find-links /tmp/wheelhouse -r /tmp/requirements.txt "/src[runner]" \
    && rm -rf /tmp/wheelhouse /tmp/requirements.txt /src \
    && python -c "import runner.registry, transformers; print('transformers', transformers.__version__)"
# The orchestrator runs containers as the host user's uid:gid (so result files belong to the user); uid 1000
# is the fallback. HF_HOME is a mount point: the cache volume (read-only during inference).
RUN (getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin vlm) \
    && mkdir -p /cache/huggingface /results /data /models && chmod 1777 /cache/huggingface /results
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "runner"]
CMD ["--help"]
