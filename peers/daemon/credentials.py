"""A peer's side of admission: its curve keys, the keys its data port accepts, the coordinator's key.

In a swarm with a swarm key (see `peers.protocol.admission`) the peer publishes its curve key
and, with `--join-token`, the proof that admits it; the coordinator lists every admitted peer
in its control record, and this peer's data port then accepts exactly those keys plus the
coordinator's (refreshed as the control record changes). In an open swarm there is nothing to
hold: `keys` is None and every method is a no-op.
"""
from __future__ import annotations

from pathlib import Path

from peers.protocol import ControlRecord, JoinToken, PlanRecord, admission_proof, owner_fingerprint
from peers.security import Admission, CurveKeys, load_or_create_keys

from .records import COORDINATOR_NAME

__all__ = ["Credentials"]


class Credentials:
    """name: this peer's; token: `--join-token`; key_file: `--peer-key` (both None: an open swarm)."""

    def __init__(self, name: str, token: JoinToken | None, key_file: Path | None) -> None:
        self.name = name
        self.token = token
        self.keys: CurveKeys | None = None
        if token is not None or key_file is not None:
            self.keys = load_or_create_keys(key_file) if key_file else CurveKeys.generate()
        self.coordinator_key = token.coordinator_key if token else ""
        self.admission = Admission({COORDINATOR_NAME: self.coordinator_key} if token else {})

    @property
    def public_key(self) -> str | None:
        return self.keys.public if self.keys else None

    def announced(self, owner: bytes) -> tuple[str, str]:
        """What the peer record says to get this peer admitted: (curve key, join-token proof), "" if none."""
        if self.keys is None:
            return "", ""
        proof = "" if self.token is None else admission_proof(self.token, self.name, self.keys.public,
                                                              owner_fingerprint(owner))
        return self.keys.public, proof

    def check(self, control: ControlRecord) -> None:
        """ValueError saying which flag to fix when this peer and the swarm disagree on admission."""
        if control.curve_key and self.keys is None:
            raise ValueError("this swarm admits only invited peers: pass --join-token TOKEN (printed by the "
                             "coordinator, also in its DIR/coordinator.json), or --peer-key FILE with a key the "
                             "coordinator lists in --allow-keys")
        if self.keys is None:
            return
        if not control.curve_key:
            raise ValueError("the coordinator runs an open swarm (no --swarm-key): drop --join-token/--peer-key")
        if self.coordinator_key and control.curve_key != self.coordinator_key:
            raise ValueError("the coordinator's curve key differs from the one in --join-token: the token is "
                             "from another swarm (or another run of it); ask for the current token")
        self.coordinator_key = control.curve_key

    def admitted(self, control: ControlRecord) -> bool:
        """Whether the coordinator lists this peer, with this peer's key, as admitted."""
        if self.keys is None:
            return True
        mine = control.admitted.get(self.name)
        return mine is not None and mine.key == self.keys.public

    def refresh(self, control: ControlRecord) -> None:
        """Accept connections from exactly the coordinator and the peers it admitted."""
        if self.keys is None or not self.coordinator_key:
            return
        keys = {name: admitted.key for name, admitted in control.admitted.items() if admitted.key}
        keys[COORDINATOR_NAME] = self.coordinator_key
        self.admission.update(keys)

    def adopt(self, plan: PlanRecord) -> None:
        """A plan's members are admitted even if the control record read last lags behind it."""
        if self.keys is None:
            return
        for name, key in plan.keys.items():
            if name != self.name and self.admission.key_of(name) != key:
                self.admission.admit(name, key)

    def server_key(self, control: ControlRecord, name: str) -> str | None:
        """The curve key to dial peer `name` with (None in an open swarm)."""
        if self.keys is None:
            return None
        admitted = control.admitted.get(name)
        return admitted.key if admitted else None
