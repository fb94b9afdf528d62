# The job image: CUDA-enabled PyTorch with influence-job installed. The same image runs the `run` step
# (torchrun ... influence-job run), the metrics sidecar (influence-job exporter) and the publish step.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="influence-job" \
      org.opencontainers.image.description="Gradient-similarity and H^-1 influence diagnostics for RL-trained LMs" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /opt/influence-job
# The locked dependencies (with hashes) in their own layer, before the source: a code change reuses it.
COPY images/requirements.txt ./requirements.txt
RUN pip install --no-cache-dir --require-hashes --requirement requirements.txt \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin influence
COPY pyproject.toml README.md ./
COPY influence_job ./influence_job
# The package alone; the base image's torch satisfies its range.
RUN pip install --no-cache-dir --no-deps .
USER 10001
WORKDIR /home/influence

ENTRYPOINT ["influence-job"]
CMD ["run"]
