"""Reading and writing the protocol's records in the DHT, skipping anything invalid.

Shared by the peer daemon, the coordinator and `swarm status`, so all three agree on which
records count: a peer record must parse and be signed by its writer (the DHT validator already
refused forged ones); the plan and control records must come from the coordinator that the
reader trusts (pinned on first sight, see `CoordinatorPin`).
"""
from __future__ import annotations

import logging
from typing import Any, TypeVar

from peers.dht import SwarmDHT, dht_time
from peers.protocol import (
    CONTROL_KEY,
    PEERS_KEY,
    PLAN_KEY,
    ControlRecord,
    PeerRecord,
    PlanRecord,
    RecordError,
    from_builtins,
    peer_subkey,
    subkey_name,
    subkey_owner,
)

__all__ = ["read_peers", "write_peer", "publish_coordinator", "CoordinatorPin", "COORDINATOR_NAME", "PLAN_TTL_S"]

log = logging.getLogger(__name__)

Signed = TypeVar("Signed", PlanRecord, ControlRecord)

COORDINATOR_NAME = "coordinator"
# Plan and control records outlive a coordinator restart (`--resume` reads the last version).
PLAN_TTL_S = 24 * 3600.0


def read_peers(dht: SwarmDHT) -> dict[str, PeerRecord]:
    """Live peer records by name (expired ones are gone from the DHT already)."""
    found = dht.get(PEERS_KEY) or {}
    peers: dict[str, PeerRecord] = {}
    if not isinstance(found, dict):
        return peers
    for subkey, value in found.items():
        try:
            name = subkey_name(subkey)
            record = PeerRecord.from_wire(value)
        except RecordError as error:
            log.debug("skipping invalid peer record: %s", error)
            continue
        if record.name != name:
            log.debug("skipping peer record whose name %r differs from its subkey %r", record.name, name)
            continue
        peers[name] = record
    return peers


def write_peer(dht: SwarmDHT, record: PeerRecord, ttl: float) -> bool:
    """Announce `record` (stamped with the current DHT time) for `ttl` seconds."""
    record.heartbeat = dht_time()
    return dht.store(PEERS_KEY, record.to_wire(), ttl, subkey=peer_subkey(record.name, dht.owner))


class CoordinatorPin:
    """Which coordinator's plan and control records to follow.

    Trust on first use: the first coordinator seen is pinned (a resumed coordinator keeps its
    signing key in its checkpoint directory, so it stays the same). Records are signed, so once
    pinned nobody else can feed this reader a plan.
    """

    def __init__(self, owner: bytes | None = None) -> None:
        self.owner = owner  # given: trust exactly this coordinator (it reading its own records)

    def plan(self, dht: SwarmDHT) -> PlanRecord | None:
        """The pinned coordinator's plan record, or None (none yet, or invalid: logged)."""
        return self._read(dht, PLAN_KEY, PlanRecord)

    def control(self, dht: SwarmDHT) -> ControlRecord | None:
        """The pinned coordinator's control record, or None (none yet, or invalid: logged)."""
        return self._read(dht, CONTROL_KEY, ControlRecord)

    def _read(self, dht: SwarmDHT, key: str, kind: type[Signed]) -> Signed | None:
        value = self._pick(dht.get(key))
        try:
            return None if value is None else from_builtins(value, kind, f"{key} record")
        except RecordError as error:
            log.warning("ignoring an invalid %s record: %s", key, error)
            return None

    def _pick(self, found: Any) -> Any:
        if not isinstance(found, dict):
            return None
        for subkey, value in found.items():
            if not isinstance(subkey, bytes) or b"[owner:" not in subkey:
                continue
            owner = subkey_owner(subkey)
            if self.owner is None and subkey_name(subkey) == COORDINATOR_NAME:
                self.owner = owner
            if owner == self.owner:
                return value
        return None


def publish_coordinator(dht: SwarmDHT, key: str, value: dict[str, Any]) -> bool:
    """Store a coordinator record (plan or control) under the coordinator's signed subkey."""
    return dht.store(key, value, PLAN_TTL_S, subkey=peer_subkey(COORDINATOR_NAME, dht.owner))
