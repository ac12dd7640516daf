# syntax=docker/dockerfile:1
# The lora-router image: the router (`lora-router serve`) and the registrar
# sidecar (`lora-router register`). Build: docker build -t lora-router:0.1.0 .
#
# Stage 1 builds the project wheel and installs it with its dependencies into
# a virtual environment; stage 2 copies only that environment onto the same
# pinned base, so no compiler, pip cache or source tree ships.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, pinned (scripts/lock_runtime_deps.py): their layer is reused until the lock changes.
COPY constraints.txt ./
RUN python -m venv /opt/lora-router \
    && /opt/lora-router/bin/pip install --require-virtualenv -r constraints.txt
COPY pyproject.toml README.md LICENSE ./
COPY allocator/ allocator/
COPY discovery/ discovery/
COPY router/ router/
COPY bench/ bench/
RUN /opt/lora-router/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/lora-router/bin/pip install --no-deps /wheels/lora_router-*.whl \
    && /opt/lora-router/bin/pip check

FROM ${PYTHON_IMAGE}
# VERSION is router.__version__; REVISION the commit built, e.g.
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="lora-router" \
      org.opencontainers.image.description="Router for vLLM fleets serving many LoRA adapters" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
RUN groupadd --system --gid 10001 lora \
    && useradd --system --uid 10001 --gid lora --home-dir /home/lora --create-home \
       --shell /usr/sbin/nologin lora
COPY --from=build /opt/lora-router /opt/lora-router
ENV PATH=/opt/lora-router/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/lora
EXPOSE 8000
ENTRYPOINT ["lora-router"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
