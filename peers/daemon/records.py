"""Reading and writing the protocol's records in the DHT, skipping anything invalid or forged.

Shared by the peer daemon, the coordinator and `swarm status`, so all three agree on which
records count: a peer record must parse and be signed by its writer (the DHT validator already
refused unsigned ones), and a name belongs to the signing key that first registered it (the
coordinator binds it and lists the binding in its control record, `ControlRecord.admitted`);
a record for that name signed by another key is forged and ignored. The plan and control records
must come from the coordinator the reader trusts (`CoordinatorPin`).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from peers.dht import SwarmDHT, dht_time, peer_id_of
from peers.protocol import (
    CONTROL_KEY,
    PEERS_KEY,
    PLAN_KEY,
    ControlRecord,
    PeerRecord,
    PlanRecord,
    RecordError,
    from_builtins,
    owner_fingerprint,
    peer_subkey,
    subkey_name,
    subkey_owner,
)

__all__ = ["read_claims", "read_peers", "write_peer", "publish_coordinator", "CoordinatorPin", "COORDINATOR_NAME",
           "PLAN_TTL_S", "FORGED"]

log = logging.getLogger(__name__)

Signed = TypeVar("Signed", PlanRecord, ControlRecord)

COORDINATOR_NAME = "coordinator"
# Plan and control records outlive a coordinator restart (`--resume` reads the last version).
PLAN_TTL_S = 24 * 3600.0


# Peer records ignored because another key owns their name, by name (this process's total).
FORGED: Counter[str] = Counter()


def read_claims(dht: SwarmDHT) -> dict[str, list[tuple[str, PeerRecord]]]:
    """Every valid peer record by name, with the `owner_fingerprint` of the key that signed it.

    More than one key may claim a name; `read_peers` and the coordinator's admission decide which
    one counts.
    """
    found = dht.get(PEERS_KEY) or {}
    claims: dict[str, list[tuple[str, PeerRecord]]] = {}
    if not isinstance(found, dict):
        return claims
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
        claims.setdefault(name, []).append((owner_fingerprint(subkey_owner(subkey)), record))
    return claims


def read_peers(dht: SwarmDHT, owners: Mapping[str, str] | None = None) -> dict[str, PeerRecord]:
    """Live peer records by name (expired ones are gone from the DHT already).

    owners: name -> `owner_fingerprint` of the key the name is bound to. A record for a bound name
    signed by another key is forged: ignored, counted in FORGED and logged. A name that is not
    bound yet counts only while a single key claims it (two claimants: neither, until one leaves).
    """
    peers: dict[str, PeerRecord] = {}
    for name, claimed in read_claims(dht).items():
        bound = owners.get(name) if owners else None
        genuine = [record for owner, record in claimed if bound is None or owner == bound]
        for owner, _record in claimed:
            if bound is not None and owner != bound:
                FORGED[name] += 1
                log.warning("ignoring a forged peer record for %r: signed by key %s, the name belongs to %s",
                            name, owner, bound)
        if len(genuine) == 1:
            peers[name] = genuine[0]
        elif len(genuine) > 1:
            log.warning("%d keys claim the unbound peer name %r; ignoring all until one is left", len(genuine), name)
    return peers


def write_peer(dht: SwarmDHT, record: PeerRecord, ttl: float) -> bool:
    """Announce `record` (stamped with the current DHT time) for `ttl` seconds."""
    record.heartbeat = dht_time()
    return dht.store(PEERS_KEY, record.to_wire(), ttl, subkey=peer_subkey(record.name, dht.owner))


class CoordinatorPin:
    """Which coordinator's plan and control records to follow, the first time one is seen.

    In order of strength: `owner` (the coordinator reading its own records); `fingerprint` (the
    join token names the coordinator's signing key); `peer_ids`, the /p2p/IDs of `--initial-peers`
    (a coordinator signs with its libp2p identity, `peers.dht.peer_id_of`); with none of those, or
    when no coordinator record matches the peer IDs (the initial peer was another volunteer), trust
    on first use. A resumed coordinator keeps its key in its checkpoint directory, so it stays the
    same; records are signed, so once pinned nobody else can feed this reader a plan.
    """

    def __init__(self, owner: bytes | None = None, *, fingerprint: str | None = None,
                 peer_ids: Collection[str] = ()) -> None:
        self.owner = owner
        self.fingerprint = fingerprint
        self.peer_ids = frozenset(peer_ids)

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
        signed = {subkey_owner(subkey): value for subkey, value in found.items()
                  if isinstance(subkey, bytes) and b"[owner:" in subkey and subkey_name(subkey) == COORDINATOR_NAME}
        if self.owner is None:
            self.owner = self._choose(list(signed))
        return signed.get(self.owner) if self.owner is not None else None

    def _choose(self, owners: list[bytes]) -> bytes | None:
        if self.fingerprint is not None:  # the join token said who: nobody else, ever
            return next((owner for owner in owners if owner_fingerprint(owner) == self.fingerprint), None)
        by_id = [owner for owner in owners if peer_id_of(owner) in self.peer_ids]
        if by_id:
            return by_id[0]
        if owners and self.peer_ids:
            log.warning("no coordinator record is signed by an --initial-peers node; trusting the first one seen")
        return owners[0] if owners else None


def publish_coordinator(dht: SwarmDHT, key: str, value: dict[str, Any]) -> bool:
    """Store a coordinator record (plan or control) under the coordinator's signed subkey."""
    return dht.store(key, value, PLAN_TTL_S, subkey=peer_subkey(COORDINATOR_NAME, dht.owner))
