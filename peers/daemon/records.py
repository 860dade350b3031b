"""Reading and writing the protocol's records in the DHT, skipping anything invalid or forged.

Shared by the peer daemon, the coordinator and `swarm status`, so all three agree on which
records count: a peer record must parse and be signed by its writer (the DHT validator already
refused unsigned ones), and a name belongs to the signing key that first registered it (the
coordinator binds it and lists the binding in its control record, `ControlRecord.admitted`);
a record for that name signed by another key is forged and ignored. The plan and control records
must come from the coordinator the reader trusts (`CoordinatorPin`).

Peer records are spread over PEER_BUCKETS keys (`peers.protocol.peer_bucket`), so no single DHT
value grows with the swarm. `read_claims`/`read_peers` read every bucket at once; a reader that
reads many times a second (the coordinator) keeps a `PeerDirectory` and re-reads a few buckets
per call instead.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from peers.dht import SwarmDHT, dht_time, peer_id_of
from peers.protocol import (
    CONTROL_KEY,
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
from peers.protocol.records import BUCKET_KEYS, PEER_BUCKETS, bucket_key, peer_bucket

from .timeouts import PEER_TTL_S

__all__ = ["read_claims", "read_peers", "write_peer", "publish_coordinator", "CoordinatorPin", "COORDINATOR_NAME",
           "PLAN_TTL_S", "FORGED", "PeerDirectory", "Claims", "PER_REFRESH"]

log = logging.getLogger(__name__)

Signed = TypeVar("Signed", PlanRecord, ControlRecord)

COORDINATOR_NAME = "coordinator"
# Plan and control records outlive a coordinator restart (`--resume` reads the last version).
PLAN_TTL_S = 24 * 3600.0


# Peer records ignored because another key owns their name, by name (this process's total).
FORGED: Counter[str] = Counter()

# Claims to peer names: name -> [(owner_fingerprint of the signing key, record)], as `read_claims` gives them.
Claims = dict[str, list[tuple[str, PeerRecord]]]

# Buckets a `PeerDirectory` re-reads round-robin per refresh: a sweep of 64 buckets takes 16
# refreshes, 0.8 s at the coordinator's 20 ticks a second (and within a record's 10 s TTL down to 2).
PER_REFRESH = 4


def read_claims(dht: SwarmDHT) -> Claims:
    """Every valid peer record by name, with the `owner_fingerprint` of the key that signed it.

    Reads all PEER_BUCKETS buckets concurrently (`SwarmDHT.get_many`); a bucket whose lookup failed
    contributes nothing. More than one key may claim a name; `read_peers` and the coordinator's
    admission decide which one counts.
    """
    answers = dht.get_many(BUCKET_KEYS)
    claims: Claims = {}
    for bucket, key in enumerate(BUCKET_KEYS):
        if key in answers:
            claims.update(_bucket_claims(bucket, answers[key]))  # a name lives in one bucket only
    return claims


def read_peers(dht: SwarmDHT, owners: Mapping[str, str] | None = None) -> dict[str, PeerRecord]:
    """Live peer records by name (expired ones are gone from the DHT already).

    owners: name -> `owner_fingerprint` of the key the name is bound to. A record for a bound name
    signed by another key is forged: ignored, counted in FORGED and logged. A name that is not
    bound yet counts only while a single key claims it (two claimants: neither, until one leaves).
    """
    return _genuine(read_claims(dht), owners)


class PeerDirectory:
    """An incremental view of every peer record, for a reader that looks many times a second.

    Reading every bucket costs PEER_BUCKETS lookups and, at 10,000 peers, ~13 MB; the coordinator
    looks 20 times a second. A directory keeps the records last seen in each bucket, and each
    `refresh(names)` re-reads the buckets of `names` (whose expiry must show at once: the plan's
    members) plus the next `per_refresh` buckets round-robin. So a refresh costs at most
    len(buckets of names) + per_refresh lookups, sent at once, and every bucket is re-read at least
    once every `sweep` refreshes: a record that expired, or a new one, shows within a sweep. The
    first refresh reads every bucket (a coordinator must not plan from a partial view). A bucket
    whose lookup failed keeps its last records and is read again at the next refresh. A record missing
    from an answer while its own stamp says it cannot have expired yet (a lookup that reached a node
    without it) is kept until it could have: a live peer never looks dead for one bad read.

        directory = PeerDirectory(dht)
        directory.refresh(plan.members())
        peers = directory.peers(owners)  # what read_peers would say, each bucket at most a sweep old

    The forged-record rules are `read_peers`' own; `claims()` is `read_claims`' answer.
    """

    def __init__(self, dht: SwarmDHT, per_refresh: int = PER_REFRESH) -> None:
        if not 1 <= per_refresh <= PEER_BUCKETS:
            raise ValueError(f"per_refresh must be in 1..{PEER_BUCKETS}, not {per_refresh}")
        self.dht = dht
        self.per_refresh = per_refresh
        self._buckets: dict[int, Claims] = {}
        self._failed: set[int] = set()
        self._next = 0
        self._started = False

    @property
    def sweep(self) -> int:
        """Refreshes within which every bucket is re-read."""
        return math.ceil(PEER_BUCKETS / self.per_refresh)

    def refresh(self, names: Collection[str] = ()) -> list[int]:
        """Re-read the buckets of `names`, the next round-robin buckets and any whose last lookup
        failed (every bucket, the first time); returns the buckets read."""
        if self._started:
            due = {peer_bucket(name) for name in names} | self._failed
            due.update((self._next + i) % PEER_BUCKETS for i in range(self.per_refresh))
            self._next = (self._next + self.per_refresh) % PEER_BUCKETS
        else:
            due, self._started = set(range(PEER_BUCKETS)), True
        buckets = sorted(due)
        answers = self.dht.get_many([bucket_key(bucket) for bucket in buckets])
        for bucket in buckets:
            key = bucket_key(bucket)
            if key in answers:
                self._buckets[bucket] = _unexpired(self._buckets.get(bucket, {}), _bucket_claims(bucket, answers[key]))
                self._failed.discard(bucket)
            else:
                self._failed.add(bucket)
        return buckets

    def claims(self) -> Claims:
        """Every valid claim seen, by name (as `read_claims`, each bucket as of its last read)."""
        merged: Claims = {}
        for claims in self._buckets.values():
            merged.update(claims)
        return merged

    def peers(self, owners: Mapping[str, str] | None = None) -> dict[str, PeerRecord]:
        """The genuine records by name, by `read_peers`' rules (forged ones counted in FORGED)."""
        return _genuine(self.claims(), owners)


def write_peer(dht: SwarmDHT, record: PeerRecord, ttl: float) -> bool:
    """Announce `record` (stamped with the current DHT time) for `ttl` seconds, in its name's bucket."""
    record.heartbeat = dht_time()
    return dht.store(bucket_key(peer_bucket(record.name)), record.to_wire(), ttl,
                     subkey=peer_subkey(record.name, dht.owner))


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


def _unexpired(before: Claims, now: Claims) -> Claims:
    """`now`, plus the names of `before` it lacks whose newest record was stamped less than a TTL ago."""
    kept = {name: claims for name, claims in before.items() if name not in now
            and max(record.heartbeat for _, record in claims) + PEER_TTL_S > dht_time()}
    return {**now, **kept}


def _bucket_claims(bucket: int, found: Any) -> Claims:
    """The valid claims in one bucket's DHT value (subkey -> wire record); a record stored in
    another name's bucket is skipped, so each name has exactly one place to look."""
    claims: Claims = {}
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
        if peer_bucket(name) != bucket:
            log.debug("skipping peer record for %r stored in bucket %d, not its own", name, bucket)
            continue
        claims.setdefault(name, []).append((owner_fingerprint(subkey_owner(subkey)), record))
    return claims


def _genuine(claims: Claims, owners: Mapping[str, str] | None) -> dict[str, PeerRecord]:
    """`read_peers`' rules applied to `claims`: forged records ignored (counted), contested unbound names dropped."""
    peers: dict[str, PeerRecord] = {}
    for name, claimed in claims.items():
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
