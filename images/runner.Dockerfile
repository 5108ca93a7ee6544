# The runner image of ONE family. What differs between families is only their exact pins, in
# images/<FAMILY>/requirements.txt (families may need incompatible transformers versions); this file is shared.
# Build from the repository root (the context must be the repository):
#   docker build -f images/runner.Dockerfile --build-arg FAMILY=llava -t vlm-ablation/llava:latest .
# (or: make images). FAMILY is a catalogue family (runner/catalogue.toml), e.g. generic for hf:Org/Name models.
# BASE_IMAGE must provide python (3.11+) and torch (+ torchvision where a family needs it); the default is the
# public CUDA PyTorch runtime image.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# --- stage 1: install. The wheelhouse is copied into THIS stage only, so it never becomes a layer of the image.
FROM ${BASE_IMAGE} AS install
# Labelled so that pruning dangling images keeps this stage: it is the build cache of the next build.
LABEL io.vlm-ablation.stage="install"
ARG FAMILY
# The family's pins; a user's catalogue entry with its own `pins` file is staged under images/.user-pins/.
ARG PINS=images/${FAMILY}/requirements.txt
# PIP_NO_INDEX=1 installs only from images/wheelhouse/ (offline builds, CI); 0 also reads the package index.
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
USER root
COPY images/wheelhouse/ /tmp/wheelhouse/
COPY ${PINS} /tmp/requirements.txt
# The pins go into their own prefix (torch and what else the base satisfies stay in the base); the final stage puts
# that prefix first on PYTHONPATH, so the pinned versions win over any the base ships.
RUN test -n "${FAMILY}" || { echo "build with --build-arg FAMILY=<family>"; exit 1; } \
    && python -m pip install --prefix /opt/stage --find-links /tmp/wheelhouse -r /tmp/requirements.txt \
    && mkdir -p /opt/vlm-ablation && mv /opt/stage/lib/python3*/site-packages /opt/vlm-ablation/site-packages
COPY pyproject.toml /src/
COPY contract /src/contract
COPY runner /src/runner
# The orchestrator package rides along for its fetch step (python -m orchestrator.hub_fetch needs only huggingface_hub).
COPY orchestrator /src/orchestrator
RUN python -m pip install --no-deps --find-links /tmp/wheelhouse --target /opt/vlm-ablation/project /src

# --- stage 2: the image.
FROM ${BASE_IMAGE}
ARG FAMILY
ENV PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/vlm-ablation/project:/opt/vlm-ablation/site-packages \
    HF_HOME=/cache/huggingface \
    HOME=/tmp
LABEL org.opencontainers.image.title="vlm-ablation/${FAMILY}" \
      io.vlm-ablation.family="${FAMILY}"
USER root
# Two layers: the pins (cached while requirements.txt is unchanged), then the project's own code (small).
COPY --from=install /opt/vlm-ablation/site-packages /opt/vlm-ablation/site-packages
COPY --from=install /opt/vlm-ablation/project /opt/vlm-ablation/project
# The orchestrator runs containers as the invoking user's uid:gid; uid 1000 is only the image's default user.
# HF_HOME is a mount point: the cache volume (read-only during inference).
RUN (getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin vlm) \
    && mkdir -p /cache/huggingface /results /data /models && chmod 1777 /cache/huggingface /results
USER 1000:1000
WORKDIR /tmp
# Smoke test, offline: every catalogue entry of this family builds its tiny checkpoint, loads it with its real model
# and processor classes and captions a generated panorama; a family whose checkpoints need the Hub imports only.
RUN python -m runner.smoke --family "${FAMILY}"
ENTRYPOINT ["python", "-m", "runner"]
CMD ["--help"]
