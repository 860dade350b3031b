"""Which announced peers belong to the swarm: names bound to keys, join tokens and allowlists checked.

Every tick the coordinator looks at all claims to peer names and keeps, for each name, only the
record signed by the key the name is bound to. The claims come from a `PeerDirectory`: each tick
re-reads the buckets of the names the coordinator needs fresh (its plan's members) and a few
others round-robin, so a tick costs a bounded number of DHT lookups at any swarm size, and every
record is at most one sweep (0.8 s at 20 ticks a second) old. A name is bound the first time a
single key claims it and passes admission; the binding never moves, so a record for that name
signed by anybody else is forged (ignored, counted). The bindings are kept in DIR/admitted.json,
so a coordinator started with `--resume` recognises the same peers (a fresh run starts empty).

Admission, with `--swarm-key`: the record must carry a curve key and either a valid join-token
proof for it (`peers.protocol.admission`) or a key listed in `--allow-keys`; a curve key already
admitted under another name is refused. Without `--swarm-key` the swarm is open: every name is
admitted, but still bound to its first signing key.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path

from peers.daemon.records import COORDINATOR_NAME, PeerDirectory
from peers.dht import SwarmDHT
from peers.protocol import Admitted, JoinToken, PeerRecord, RecordError, check_proof, from_builtins
from peers.security import CurveKeys

from .checkpoint import write_json_atomic

__all__ = ["Gatekeeper"]

log = logging.getLogger(__name__)

_FILE = "admitted.json"


class Gatekeeper:
    """Admits peers and binds their names; `admitted` goes into every control record.

    keys/token: the swarm's curve keys and join token (None: an open swarm); allowed: curve keys
    of `--allow-keys`. `on_event(text)` hears each refusal once per name and reason.
    """

    def __init__(self, directory: Path, keys: CurveKeys | None, token: JoinToken | None, allowed: frozenset[str],
                 on_event: Callable[[str], None], *, resume: bool = False) -> None:
        self.path = directory / _FILE
        self.keys = keys
        self.token = token
        self.allowed = allowed
        self.on_event = on_event
        self.admitted: dict[str, Admitted] = _load(self.path) if resume else {}
        self.forged: Counter[str] = Counter()  # records ignored because another key owns the name
        self.refused: Counter[str] = Counter()  # names whose admission failed (each read counts)
        self._said: set[tuple[str, str]] = set()
        self.directory: PeerDirectory | None = None  # made by the first `read`, for its DHT

    @property
    def secure(self) -> bool:
        return self.keys is not None

    def read(self, dht: SwarmDHT, fresh: Collection[str] = ()) -> dict[str, PeerRecord]:
        """The genuine records of admitted peers, by name; admits newcomers on the way.

        fresh: names whose records must be re-read now (the current plan's members, so one that
        expired or reported a failure shows this very tick); every other record is re-read at least
        once per sweep (`PeerDirectory`). The first read reads every record.
        """
        if self.directory is None or self.directory.dht is not dht:
            self.directory = PeerDirectory(dht)
        self.directory.refresh(fresh)
        peers: dict[str, PeerRecord] = {}
        changed = False
        for name, claims in self.directory.claims().items():
            bound = self.admitted.get(name)
            if bound is not None:
                for owner, record in claims:
                    if owner == bound.owner and (not self.secure or record.curve_key == bound.key):
                        peers[name] = record
                    else:
                        self._forged(name, owner)
                continue
            if len(claims) > 1:
                self._refuse(name, f"{len(claims)} keys claim the name; waiting until one is left")
                continue
            owner, record = claims[0]
            why = self._why_not(name, owner, record)
            if why:
                self._refuse(name, why)
                continue
            # a new dict, never a changed one: other threads read `admitted` while this one admits
            self.admitted = {**self.admitted, name: Admitted(key=record.curve_key if self.secure else "", owner=owner)}
            peers[name] = record
            changed = True
        if changed:
            write_json_atomic(self.path, {name: {"key": a.key, "owner": a.owner} for name, a in self.admitted.items()})
        return peers

    def plan_keys(self, names: list[str]) -> dict[str, str]:
        """The curve keys a plan lists: of `names` and of the coordinator (none in an open swarm)."""
        if self.keys is None:
            return {}
        admitted = self.admitted
        return {**{name: admitted[name].key for name in names if name in admitted}, COORDINATOR_NAME: self.keys.public}

    def _why_not(self, name: str, owner: str, record: PeerRecord) -> str:
        """Why `record` cannot be admitted ("" when it can)."""
        if not self.secure:
            return ""
        if not record.curve_key:
            return "it announces no curve key: start it with --join-token (or --peer-key for --allow-keys)"
        taken = next((other for other, a in self.admitted.items() if a.key == record.curve_key), None)
        if taken is not None:
            return f"its curve key is already admitted as {taken!r}"
        if record.curve_key in self.allowed:
            return ""
        if self.token is not None and record.admission and check_proof(self.token, name, record.curve_key, owner,
                                                                       record.admission):
            return ""
        return "no valid join-token proof, and its key is not in --allow-keys"

    def _forged(self, name: str, owner: str) -> None:
        self.forged[name] += 1
        if (name, owner) not in self._said:
            self._said.add((name, owner))
            log.warning("ignoring a forged record for peer %r signed by key %s", name, owner)
            self.on_event(f"ignoring a forged record for peer {name!r}: signed by another key than the one "
                          "it joined with")

    def _refuse(self, name: str, why: str) -> None:
        self.refused[name] += 1
        if (name, why) not in self._said:
            self._said.add((name, why))
            log.warning("not admitting %r: %s", name, why)
            self.on_event(f"not admitting peer {name!r}: {why}")


def _load(path: Path) -> dict[str, Admitted]:
    """The bindings a previous run of this coordinator made (none when the file is missing)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}; move it away to start with no admitted peers") from None
    try:
        return from_builtins(value, dict[str, Admitted], str(path))
    except RecordError as error:
        raise ValueError(f"{error}; move the file away to start with no admitted peers") from None
