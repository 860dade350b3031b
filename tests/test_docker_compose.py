"""docker/: the compose file is valid to the docker client, and the images are what the docs say."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parent.parent / "docker"
ROOT = DOCKER.parent


def _compose() -> list[str]:
    """The compose command of this machine's docker client (the plugin, else docker-compose v1)."""
    if shutil.which("docker") is None and shutil.which("docker-compose") is None:
        pytest.skip("the docker client is not installed")
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    pytest.skip("the docker client has no compose command (neither `docker compose` nor docker-compose)")


def test_compose_config_is_valid():
    yaml = pytest.importorskip("yaml")
    result = subprocess.run([*_compose(), "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"coordinator", "peer"} <= set(services)
    coordinator, peer = services["coordinator"], services["peer"]
    assert "--http" in coordinator["command"] and "--checkpoint-dir" in coordinator["command"]
    assert peer["entrypoint"] == ["swarm-join"] and "--metrics-port" in peer["command"]
    assert "ports" not in peer  # peers pick free ports: `--scale peer=N` never collides


@pytest.mark.parametrize(("name", "base", "entrypoint"), [
    ("peer.Dockerfile", r"nvidia/cuda:", '["swarm-peer", "join"]'),
    ("peer-cpu.Dockerfile", r"python:3\.11-slim", '["swarm-peer", "join"]'),
    ("coordinator.Dockerfile", r"python:3\.11-slim", '["swarm-coordinator"]'),
])
def test_images_base_entrypoint_and_copied_paths(name, base, entrypoint):
    text = (DOCKER / name).read_text()
    assert re.search(rf"^(ARG CUDA_IMAGE=|FROM ){base}", text, re.M), name
    assert f"ENTRYPOINT {entrypoint}" in text
    for source in re.findall(r"^COPY (\S+)", text, re.M):  # build context: the repository root
        assert (ROOT / source).exists(), f"{name} copies missing {source}"


def test_join_script_is_executable_shell():
    script = DOCKER / "join.sh"
    assert script.stat().st_mode & 0o111
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
