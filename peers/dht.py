"""A thin wrapper on `hivemind.DHT` that never leaves a process behind.

hivemind runs its DHT in a child process, which in turn runs the libp2p daemon (`p2pd`). If the
owner dies without a clean shutdown (SIGKILL, an uncaught error in a thread), both used to be
orphaned: the top complaint of hivemind's users. Here the DHT child asks the kernel to send it
SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), and its SIGTERM handler terminates its own
children (`p2pd`) before exiting. A clean `close()` goes through hivemind's own shutdown.

Records are signed with hivemind's `RSASignatureValidator`: a key or subkey that carries an
`[owner:...]` marker can only be written by the holder of that key (see `peers.protocol`).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import base58
import hivemind
import multihash
from cryptography.hazmat.primitives import serialization
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.proto import crypto_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

__all__ = ["SwarmDHT", "dht_time", "load_or_create_key", "peer_id_of", "verify_signed", "GET_TIMEOUT_S",
           "STORE_TIMEOUT_S"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_START_ATTEMPTS = 3
# How long one request may wait for hivemind's answer. They must stay well below a peer record's
# life (`peers.daemon.timeouts.PEER_TTL_S`, 10 s, re-stored every HEARTBEAT_S = 2 s by a loop that
# also reads the control record): the worst gap between two heartbeats is one get's deadline plus
# the heartbeat interval, and a gap past the TTL makes a live peer look dead.
GET_TIMEOUT_S = 5.0
STORE_TIMEOUT_S = 4.0  # two heartbeats: a store still unanswered by then is overtaken by the next one


def dht_time() -> float:
    """The clock every DHT expiration is measured on (hivemind's)."""
    return float(get_dht_time())


def load_or_create_key(path: Path) -> RSAPrivateKey:
    """The signing key kept in `path`, so a restarted daemon keeps its identity (and its records)."""
    if path.exists():
        key = RSAPrivateKey.__new__(RSAPrivateKey)
        key.__setstate__({"_private_key": path.read_bytes()})  # DER, as hivemind pickles it
        return key
    key = RSAPrivateKey()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(key.to_bytes())
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return key


def _write_identity(key: RSAPrivateKey, path: Path) -> None:
    """Make `key` the libp2p identity too, so the node's p2p ID names its signing key (`peer_id_of`)."""
    protobuf = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes())
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(protobuf.SerializeToString())
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def verify_signed(owner: bytes, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is the signature of `data` by the key whose `[owner:...]` marker is `owner`."""
    match = re.fullmatch(rb"\[owner:(.+)\]", owner)
    if match is None:
        return False
    try:
        return bool(RSAPublicKey.from_bytes(match.group(1)).verify(data, signature))
    except (ValueError, TypeError):
        return False


def peer_id_of(owner: bytes) -> str | None:
    """The libp2p peer ID (base58) of the node whose `[owner:...]` marker is `owner`, or None.

    A node started with an `identity_dir` signs with its libp2p identity key, so a reader that knows
    the node's /p2p/ID (from `--initial-peers`) can tell that node's records from anybody else's.
    """
    match = re.fullmatch(rb"\[owner:(.+)\]", owner)
    if match is None:
        return None
    try:
        public = RSAPublicKey.from_bytes(match.group(1))._public_key  # hivemind keeps the key private
    except (ValueError, TypeError):
        return None
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    digest = multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))
    return str(base58.b58encode(digest).decode())


class SwarmDHT:
    """One DHT node: start, store/get signed records, close (reaping every child).

    host: the address the libp2p node listens on (`0.0.0.0` for the world, `127.0.0.1` for tests);
    port 0 picks a free one. `identity_dir`, when given, keeps the node's libp2p identity and RSA
    signing key there, so a restart (`swarm-coordinator --resume`) comes back as the same peer
    with the same multiaddr. `client_mode` nodes only ask (no one dials them): `swarm status`.
    """

    def __init__(self, initial_peers: Sequence[str] = (), host: str = "127.0.0.1", port: int = 0,
                 identity_dir: Path | None = None, startup_timeout: float = 60.0, client_mode: bool = False) -> None:
        kwargs: dict[str, Any] = {"client_mode": client_mode}
        if identity_dir is not None:
            identity_dir.mkdir(parents=True, exist_ok=True)
            private_key = load_or_create_key(identity_dir / "records.key")
            identity = identity_dir / "p2p.identity"
            if not identity.exists():
                _write_identity(private_key, identity)
            kwargs["identity_path"] = str(identity)
            kwargs["check_if_identity_free"] = False
        else:
            private_key = RSAPrivateKey()
        self.validator = RSASignatureValidator(private_key)
        self._private_key = private_key
        # Requests sent, by the name of the thread that sent them: a daemon's tests check that its
        # training thread never waits on the DHT (see `peers.step_channel`).
        self.calls: Counter[str] = Counter()
        for attempt in range(_START_ATTEMPTS):  # p2pd's bootstrap dial can time out on a loaded machine
            self._dht = _ReapingDHT(
                initial_peers=list(initial_peers) or None,
                host_maddrs=[f"/ip4/{host}/tcp/{port}"],
                record_validators=[self.validator],
                start=False,
                shutdown_timeout=5,
                **kwargs,
            )
            try:
                self._dht.run_in_background(await_ready=True, timeout=startup_timeout)
                break
            except Exception:  # hivemind raises its own error types (P2PDaemonError, TimeoutError)
                self._dht.join(5)
                if self._dht.is_alive():
                    self._dht.kill()
                    self._dht.join(5)
                if attempt == _START_ATTEMPTS - 1:
                    raise
        self._closed = False
        self._lock = threading.Lock()  # hivemind's pipe to its DHT process is not thread-safe (`_submit`)

    @property
    def owner(self) -> bytes:
        """The `[owner:...]` marker that makes a key or subkey writable only by this node."""
        return bytes(self.validator.local_public_key)

    def sign(self, data: bytes) -> bytes:
        """This node's signature of `data` with its record key; `verify_signed(owner, data, signature)` checks it."""
        return bytes(self._private_key.sign(data))

    def requests_by_thread(self) -> dict[str, int]:
        """DHT requests sent so far, by the name of the thread that sent them (a copy)."""
        with self._lock:
            return dict(self.calls)

    def multiaddrs(self) -> list[str]:
        """Addresses other nodes pass as `--initial-peers` (loopback ones included)."""
        with self._lock:
            return [str(addr) for addr in self._dht.get_visible_maddrs()]

    def store(self, key: str, value: Any, ttl: float, subkey: bytes | str | None = None, *,
              timeout: float = STORE_TIMEOUT_S) -> bool:
        """Store `value` until now + `ttl` seconds; a newer store of the same (key, subkey) wins.

        False when the store failed, took longer than `timeout` seconds (hivemind itself would wait
        forever if its process were wedged; a daemon must not) or the node is closed. Never waits
        behind another thread's request: a heartbeat goes out while a slow read is still pending.
        """
        future = self._submit(lambda: self._dht.store(key, value, dht_time() + ttl, subkey=subkey,
                                                      return_future=True))
        return bool(self._result(future, f"store of {key!r}", False, timeout))

    def get(self, key: str, *, timeout: float = GET_TIMEOUT_S) -> Any:
        """The latest value under `key` (a dict subkey -> value for subkeyed records), or None
        (also when the lookup failed, took longer than `timeout` seconds or the node is closed)."""
        future = self._submit(lambda: self._dht.get(key, latest=True, return_future=True))
        return _plain(self._result(future, f"get of {key!r}", None, timeout))

    def get_many(self, keys: Sequence[str], *, timeout: float = GET_TIMEOUT_S) -> dict[str, Any]:
        """The latest value of every key in `keys`, looked up concurrently: all are sent first, then
        awaited under one deadline, so 64 keys cost about one lookup's time, not 64.

        key -> what `get` would return (None: nothing stored). A key whose lookup failed or did not
        answer within `timeout` seconds is absent, so a reader can tell "no records" from "no answer"
        and keep what it knew (`peers.daemon.records.PeerDirectory` does).
        """
        futures = [(key, self._submit(partial(self._dht.get, key, latest=True, return_future=True))) for key in keys]
        deadline = time.monotonic() + timeout
        found: dict[str, Any] = {}
        failed: list[str] = []
        for key, future in futures:
            if future is None:  # closed
                continue
            try:
                found[key] = _plain(future.result(max(0.0, deadline - time.monotonic())))
            except Exception as error:  # a timeout, or hivemind's own error types from its process
                future.cancel()
                failed.append(f"{key!r} ({str(error) or type(error).__name__})")
        if failed:
            log.warning("DHT get of %d of %d keys failed: %s", len(failed), len(futures), ", ".join(failed[:4]))
        return found

    def _submit(self, request: Callable[[], Any]) -> Any:
        """hivemind's future for `request()`, or None once closed. Only the send is locked: two
        threads writing hivemind's pipe at once would interleave their bytes, but its DHT process
        runs each request as a task of its own and its futures may be awaited from any thread, so
        the wait happens outside the lock and one slow get holds up nobody else."""
        with self._lock:
            self.calls[threading.current_thread().name] += 1
            return None if self._closed else request()

    def _result(self, future: Any, what: str, default: Any, timeout: float) -> Any:
        if future is None:
            return default
        try:
            return future.result(timeout)
        except Exception as error:  # a timeout, or hivemind's own error types from its process
            log.warning("DHT %s failed: %s", what, str(error) or type(error).__name__)  # a timeout has no text
            future.cancel()
            return default

    def close(self) -> None:
        """Shut the node down and wait for its process and its `p2pd` to exit. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._dht.shutdown()
        self._dht.join(5)
        if self._dht.is_alive():
            self._dht.kill()
            self._dht.join(5)

    def __enter__(self) -> "SwarmDHT":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(found: Any) -> Any:
    """hivemind's answer to a get (a value with its expiration, or None) as plain values: for a
    subkeyed record, a dict subkey -> value."""
    if found is None:
        return None
    value = found.value
    if isinstance(value, dict):
        return {subkey: item.value for subkey, item in value.items()}
    return value


class _ReapingDHT(hivemind.DHT):  # type: ignore[misc]  # hivemind ships no type hints
    """hivemind's DHT process, set to die with its parent and to take its children along."""

    def run(self) -> None:
        parent = os.getppid()
        _die_with_parent()
        signal.signal(signal.SIGTERM, _terminate_children_and_exit)
        if os.getppid() != parent:  # the parent died before the death signal was armed
            _terminate_children_and_exit()
        super().run()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: clean shutdown paths still reap
        pass


def _terminate_children_and_exit(*_: object) -> None:
    children = _child_pids()
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 3.0
    while children and time.monotonic() < deadline:
        for pid in list(children):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                children.remove(pid)
        time.sleep(0.02)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    os._exit(0)


def _child_pids() -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids
