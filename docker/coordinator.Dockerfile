# The coordinator's image: `swarm-coordinator` (CPU only: it plans, commits and keeps checkpoints).
#   docker build -f docker/coordinator.Dockerfile -t swarm-coordinator .   (from the repository root)
#   docker run --network host -v swarm-run:/var/lib/swarm swarm-coordinator --listen 0.0.0.0:31337 \
#       --http 0.0.0.0:8080 --model tiny --steps 200 --min-peers 4 --checkpoint-dir /var/lib/swarm
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1
WORKDIR /opt/swarm
COPY pyproject.toml README.md ./
COPY swarm ./swarm
COPY peers ./peers
COPY compression ./compression
COPY models ./models
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install --no-cache-dir .
VOLUME /var/lib/swarm
EXPOSE 31337 8080
ENTRYPOINT ["swarm-coordinator"]
CMD ["--help"]
