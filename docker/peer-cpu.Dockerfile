# A volunteer's image for CPU-only hosts (and the peers of docker/compose.yaml).
#   docker build -f docker/peer-cpu.Dockerfile -t swarm-peer-cpu .  (from the repository root)
#   docker run --network host swarm-peer-cpu --initial-peers MULTIADDR --host 0.0.0.0
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/swarm
COPY pyproject.toml README.md ./
COPY swarm ./swarm
COPY peers ./peers
COPY compression ./compression
COPY models ./models
COPY docker/join.sh /usr/local/bin/swarm-join
# torch first, pinned, from the CPU wheel index (PyPI's Linux wheel is the multi-GB CUDA build).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install --no-cache-dir . \
 && chmod +x /usr/local/bin/swarm-join
ENTRYPOINT ["swarm-peer", "join"]
CMD ["--help"]
