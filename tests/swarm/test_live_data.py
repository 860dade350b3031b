"""`--data` given to the coordinator is all a swarm needs: peers without the file fetch the corpus.

The coordinator reads a custom corpus, announces it by sha256 and size, and serves it. The file is
then moved away, so no peer can read it from disk; the peers fetch it from the coordinator's data
port (verified, cached by hash under their cache directory) and train on it: the losses equal the
same grid run in one process on that file.
"""
from __future__ import annotations

import hashlib

import pytest

from models import read_corpus
from peers.protocol import TrainingSpec
from peers.torch_threads import torch_threads
from swarm.launcher import LocalSwarm
from swarm.local import LocalConfig, run_local

pytestmark = pytest.mark.slow

STEPS = 12
ARGS = ["--steps", str(STEPS), "--batch", "4", "--micro-batches", "2", "--stages", "2", "--replicas", "1",
        "--checkpoint-every", "6"]


def _corpus() -> bytes:
    lines = [f"Volunteer {i} trains stage {i % 2} on a corpus nobody else has on disk, line {i}." for i in range(800)]
    return "\n".join(lines).encode()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    data = root / "private.txt"
    data.write_bytes(_corpus())
    with LocalSwarm(root / "swarm") as swarm:
        swarm.start_coordinator([*ARGS, "--data", str(data)])
        swarm.initial_peers()  # the coordinator has read and announced the corpus
        hidden = data.rename(root / "elsewhere.txt")
        for name in ("p1", "p2"):
            swarm.start_peer(name)
        code = swarm.wait_exit("coordinator", 240)
        yield {"swarm": swarm, "code": code, "peer_codes": {n: swarm.wait_exit(n, 60) for n in ("p1", "p2")},
               "report": swarm.report(), "corpus": hidden.read_bytes(), "hidden": hidden}


def test_peers_without_the_file_train_to_the_end(run):
    assert run["code"] == 0, run["swarm"].log("coordinator")[-3000:]
    assert run["peer_codes"] == {"p1": 0, "p2": 0}, run["swarm"].log("p2")[-3000:]
    # both share this machine's cache directory: the second may find it cached already
    assert any("fetched the run's corpus" in run["swarm"].log(name) for name in ("p1", "p2"))


def test_the_fetched_corpus_is_cached_by_its_hash(run):
    sha = hashlib.sha256(run["corpus"]).hexdigest()
    cached = run["swarm"].dir / "cache" / "swarm" / "corpus" / f"{sha}.bin"
    assert cached.read_bytes() == run["corpus"]  # named by the hash the plan announced, content verified


def test_losses_are_those_of_training_on_that_corpus(run):
    assert read_corpus(run["hidden"]) == run["corpus"]
    layers = run["report"]["plans"][0]["layers"]
    spec = TrainingSpec(batch=4, micro_batches=2, steps=STEPS, data=str(run["hidden"]))
    with torch_threads(run["swarm"].threads):
        reference = run_local(LocalConfig(spec, stages=2, replicas=1, layers=layers, eval_samples=8))
    live = [entry["loss"] for entry in run["report"]["steps"]]
    assert live == pytest.approx([entry["loss"] for entry in reference["steps"]], rel=1e-4)
