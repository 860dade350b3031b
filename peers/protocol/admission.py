"""Who may join a swarm: join tokens, the proof a peer publishes, and the admitted-key list.

A swarm started with `swarm-coordinator --swarm-key FILE` admits a peer in one of two ways:
  - a join token (`swarm-peer join --join-token TOKEN`): the token carries the coordinator's
    curve public key, the fingerprint of its DHT signing key (so the peer pins the right
    coordinator) and a secret. The peer never publishes the secret; it publishes an HMAC of its
    own name, curve key and DHT signing key under it (`admission_proof`), which only holders of
    the token can compute and which is useless for any other key;
  - an allowlist (`--allow-keys FILE`): the curve public keys of peers the operator trusts.
The coordinator then lists every admitted peer in its control record (`Admitted`: curve key and
DHT owner), and every data port accepts exactly those keys (CurveZMQ + ZAP, `peers.security`).

The token secret derives from the swarm's secret key, so a coordinator restarted with the same
`--swarm-key` prints the same token and the peers already out there stay admitted.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Annotated

import msgspec

__all__ = ["Admitted", "JoinToken", "CurveKey", "owner_fingerprint", "admission_proof", "check_proof",
           "read_allowed_keys", "TOKEN_PREFIX"]

TOKEN_PREFIX = "swarm1-"
_SECRET_BYTES = 16
# A z85-encoded 32-byte curve key is 40 characters of z85's alphabet.
_Z85 = r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}"
CurveKey = Annotated[str, msgspec.Meta(pattern=f"^{_Z85}$")]
_CurveKeyOrNone = Annotated[str, msgspec.Meta(pattern=f"^(?:{_Z85})?$")]  # "": an open swarm


def owner_fingerprint(owner: bytes) -> str:
    """A short stable name for a DHT signing key (a subkey's `[owner:...]` marker)."""
    return hashlib.sha256(owner).hexdigest()[:32]


class Admitted(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One admitted peer: its data-plane curve key ("" in an open swarm) and the fingerprint of its
    DHT signing key. The owner binds the peer's name: a record for that name signed by any other
    key is forged.
    """

    key: _CurveKeyOrNone
    owner: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]


class JoinToken(msgspec.Struct, frozen=True):
    """What `--join-token` carries (`encode` / `parse` give its printable form)."""

    coordinator_key: str  # the coordinator's curve public key (z85)
    coordinator_owner: str  # owner_fingerprint of the coordinator's DHT signing key
    secret: bytes

    @classmethod
    def issue(cls, swarm_secret: str, coordinator_key: str, coordinator_owner: str) -> JoinToken:
        """The swarm's token: the same for the same swarm key (a resumed coordinator reissues it)."""
        secret = hmac.new(swarm_secret.encode(), b"swarm join token", hashlib.sha256).digest()[:_SECRET_BYTES]
        return cls(coordinator_key, coordinator_owner, secret)

    def encode(self) -> str:
        raw = self.coordinator_key.encode() + bytes.fromhex(self.coordinator_owner) + self.secret
        return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """A token as `encode` printed it; ValueError saying where to find the right one."""
        where = "copy it from the coordinator's output or the \"join_token\" of its DIR/coordinator.json"
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            raise ValueError(f"--join-token must start with {TOKEN_PREFIX!r}; {where}")
        body = text[len(TOKEN_PREFIX):]
        try:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"--join-token is not valid base64; {where}") from None
        if len(raw) != 40 + 16 + _SECRET_BYTES:
            raise ValueError(f"--join-token has {len(raw)} bytes, expected {40 + 16 + _SECRET_BYTES}; {where}")
        try:
            key = raw[:40].decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"--join-token does not carry a curve key; {where}") from None
        return cls(key, raw[40:56].hex(), raw[56:])


def _proof_message(name: str, curve_key: str, owner: str) -> bytes:
    return b"\x00".join((name.encode(), curve_key.encode(), owner.encode()))


def admission_proof(token: JoinToken, name: str, curve_key: str, owner: str) -> str:
    """What a peer publishes to be admitted: HMAC(secret, name | curve key | owner fingerprint)."""
    return hmac.new(token.secret, _proof_message(name, curve_key, owner), hashlib.sha256).hexdigest()


def check_proof(token: JoinToken, name: str, curve_key: str, owner: str, proof: str) -> bool:
    """Whether `proof` admits (name, curve key, owner); constant-time."""
    return hmac.compare_digest(admission_proof(token, name, curve_key, owner), proof)


def read_allowed_keys(text: str, source: str) -> frozenset[str]:
    """An `--allow-keys` file: one z85 curve public key per line, then optionally a comment; lines that
    start with `#` and blank lines are ignored (`#` is a z85 character: only a whole word is a comment)."""
    keys: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#") and len(words[0]) != 40:
            continue
        key = words[0]
        try:
            keys.add(msgspec.convert(key, CurveKey))
        except msgspec.ValidationError:
            raise ValueError(f"--allow-keys {source}, line {number}: {key[:50]!r} is not a z85 curve public key "
                             "(40 characters, as in a peer's key file \"public\")") from None
    return frozenset(keys)
