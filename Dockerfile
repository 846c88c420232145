# syntax=docker/dockerfile:1
# tokserve: CUDA by default (torch with CUDA, bitsandbytes); `--build-arg VARIANT=cpu` builds a CPU-only image.
# Layers go from what changes least to what changes most: torch, then the dependencies and the embedded model (both
# from requirements/: pins and locks), then tokserve's own code, so a code change reinstalls neither torch nor the
# model.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/tokserve \
    PATH=/opt/tokserve/bin:$PATH \
    HF_HOME=/home/tokserve/.cache/huggingface \
    TOKSERVE_HOST=0.0.0.0 \
    TOKSERVE_PORT=8000

RUN groupadd --gid 10001 tokserve \
    && useradd --create-home --uid 10001 --gid 10001 tokserve \
    && python -m venv /opt/tokserve \
    && mkdir -p /home/tokserve/.cache/huggingface /home/tokserve/.local/share/tokserve \
    && chown -R tokserve:tokserve /home/tokserve/.cache /home/tokserve/.local
WORKDIR /src

COPY deploy/install.sh deploy/install.sh
COPY requirements/torch.txt requirements/torch.txt
RUN deploy/install.sh torch "${VARIANT}"

COPY requirements requirements
RUN deploy/install.sh deps "${VARIANT}"

COPY pyproject.toml README.md ./
COPY src ./src
COPY deploy/healthcheck.py deploy/healthcheck.py
RUN deploy/install.sh app && deploy/install.sh check

USER 10001:10001
WORKDIR /home/tokserve
EXPOSE 8000
# Loading a large model takes minutes: the start period keeps `loading` from counting as a failure.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 CMD ["python", "/src/deploy/healthcheck.py"]
# Flags after `docker run IMAGE` go to `tokserve serve`; so do TOKSERVE_* variables.
ENTRYPOINT ["tokserve", "serve"]
