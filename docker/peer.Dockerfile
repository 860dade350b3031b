# A volunteer's image for GPU hosts: `swarm-peer join` on a CUDA base.
#   docker build -f docker/peer.Dockerfile -t swarm-peer .          (from the repository root)
#   docker run --gpus all --network host swarm-peer --initial-peers MULTIADDR --device cuda:0 --host 0.0.0.0
# PyPI's torch wheel for Linux carries its own CUDA libraries; the host needs the NVIDIA driver
# and the NVIDIA container toolkit (`--gpus all`). A C compiler is installed for torch.compile.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /opt/swarm
COPY pyproject.toml README.md ./
COPY swarm ./swarm
COPY peers ./peers
COPY compression ./compression
COPY models ./models
COPY docker/join.sh /usr/local/bin/swarm-join
# torch first, pinned, so the rest of the install resolves against it.
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir . \
 && chmod +x /usr/local/bin/swarm-join
ENTRYPOINT ["swarm-peer", "join"]
CMD ["--help"]
