"""What the coordinator sets up before its loop: the DHT node and the swarm's admission secrets."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from models import read_corpus
from peers.daemon.corpus import corpus_sha256
from peers.dht import SwarmDHT
from peers.protocol import JoinToken, TrainingSpec, owner_fingerprint
from peers.security import CurveKeys, load_or_create_keys

from .config import CoordinatorConfig

__all__ = ["start_dht", "SwarmSecrets", "load_secrets", "read_json", "announce_corpus", "PEERS_FILE"]

PEERS_FILE = "known_peers.json"


def start_dht(config: CoordinatorConfig, on_event: Callable[[str], None]) -> SwarmDHT:
    """The DHT node; a resumed one re-enters the swarm through the peers it knew (their nodes
    forgot the dead coordinator, so it must dial them, not wait to be dialled)."""
    directory = config.checkpoint_dir
    known = _known_dht_addrs(directory / PEERS_FILE) if config.resume else []
    identity = directory / "identity"
    if known:
        try:
            return SwarmDHT(known, host=config.host, port=config.port, identity_dir=identity)
        except Exception as error:  # hivemind's bootstrap failure types vary; none of the old peers is left
            on_event(f"none of the {len(known)} known peers answered ({error}); waiting for new ones")
    try:
        return SwarmDHT(host=config.host, port=config.port, identity_dir=identity)
    except Exception as error:  # hivemind's own types, e.g. P2PDaemonError when the port is taken
        raise ValueError(f"cannot start the DHT node on --listen {config.host}:{config.port}: {error}; "
                         "pick a free port or an address of this machine") from None


@dataclass(frozen=True)
class SwarmSecrets:
    """The swarm's curve key pair and the join token derived from it (both None: an open swarm)."""

    keys: CurveKeys | None
    token: JoinToken | None


def load_secrets(config: CoordinatorConfig, dht: SwarmDHT, on_event: Callable[[str], None]) -> SwarmSecrets:
    """Read (or create) `--swarm-key`; without it, say once that the swarm is open."""
    if config.swarm_key is None:
        on_event("WARNING: no --swarm-key: this swarm is open, anyone who reaches its ports can join and send "
                 "data; start with --swarm-key FILE to admit only peers holding the join token")
        return SwarmSecrets(None, None)
    keys = load_or_create_keys(config.swarm_key)
    token = JoinToken.issue(keys.secret, keys.public, owner_fingerprint(dht.owner))
    on_event(f"swarm key {config.swarm_key}; peers join with: --join-token {token.encode()}")
    if config.allowed_keys:
        on_event(f"also admitting the {len(config.allowed_keys)} keys of --allow-keys")
    return SwarmSecrets(keys, token)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file the coordinator wrote earlier, or None (missing, unreadable or not an object)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def announce_corpus(training: TrainingSpec) -> tuple[TrainingSpec, bytes | None]:
    """With `--data`: the spec announcing the corpus by content, and the corpus to serve to peers."""
    if training.data is None:
        return training, None
    corpus = read_corpus(training.data)
    return msgspec.structs.replace(training, data_sha256=corpus_sha256(corpus), data_bytes=len(corpus)), corpus


def _known_dht_addrs(path: Path) -> list[str]:
    addrs = (read_json(path) or {}).get("dht_addrs", [])
    return [addr for addr in addrs if isinstance(addr, str)] if isinstance(addrs, list) else []
