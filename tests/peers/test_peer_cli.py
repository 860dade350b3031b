"""The daemons' command lines: --help everywhere, clear refusals, the reachability check at join."""
from __future__ import annotations

import subprocess
import sys

import pytest

from peers.cli import main as peer_cli
from swarm.launcher import LocalSwarm

COMMANDS = [
    ["-m", "peers.cli", "join", "--help"],
    ["-m", "swarm.cli.coordinator", "--help"],
    ["-m", "swarm.cli.status", "status", "--help"],
    ["-m", "swarm.demo", "--help"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[1:3]))
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_coordinator_refuses_bad_flags_naming_them(tmp_path):
    result = subprocess.run([sys.executable, "-m", "swarm.cli.coordinator", "--steps", "5", "--stages", "2",
                             "--checkpoint-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--stages and --replicas go together" in result.stderr


def test_peer_refuses_a_bad_port():
    result = subprocess.run([sys.executable, "-m", "peers.cli", "join", "--initial-peers", "/ip4/127.0.0.1/tcp/1",
                             "--port", "70000"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--port must be in 0..65535" in result.stderr


@pytest.mark.slow
def test_a_peer_whose_data_port_is_unreachable_is_told_what_to_open(tmp_path):
    with LocalSwarm(tmp_path) as swarm:
        swarm.start_coordinator(["--steps", "5", "--min-peers", "2"])
        # It listens on 127.0.0.1 but tells others to dial 127.0.0.3, where nothing listens.
        peer = swarm.start_peer("hidden", ["--advertise-host", "127.0.0.3"])
        assert peer.wait(120) == 3
        log = swarm.log("hidden")
        assert "is not reachable" in log and "firewall" in log and "--host" in log


@pytest.mark.parametrize("tflops", ["0", "-1", "nan", "inf", "2e6"])
def test_peer_refuses_a_speed_no_device_has(tflops, capsys):
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing, before anything starts
        peer_cli(["join", "--initial-peers", "/ip4/127.0.0.1/tcp/1", "--tflops", tflops])
    assert exit_info.value.code == 2 and "--tflops must be a positive number" in capsys.readouterr().err


def test_peer_refuses_a_bad_attack_naming_the_forms():
    result = subprocess.run([sys.executable, "-m", "peers.cli", "join", "--initial-peers", "/ip4/127.0.0.1/tcp/1",
                             "--attack", "scale@1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--attack" in result.stderr and "scale:FACTOR@R" in result.stderr
