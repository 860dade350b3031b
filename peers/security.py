"""Who may talk to a data port: curve key pairs, the admitted keys, and the ZAP handler that enforces them.

A swarm started with a swarm key runs its data plane over CurveZMQ: every ROUTER is a CURVE server,
every DEALER a CURVE client, and libzmq asks a ZAP handler (RFC 27, here pyzmq's `zmq.auth`) about
each client's public key during the handshake. The handler accepts exactly the keys an `Admission`
holds, so a plain zmq client or an unknown key never completes a handshake and nothing it sends
reaches the stage; each refused handshake is counted (`rejected.unauthenticated`).

    keys = load_or_create_keys(Path("peer.key"))          # {"public", "secret"}, mode 0600
    admission = Admission({"p2": p2_public_key})          # name -> curve public key
    transport = ZmqTransport("p1", keys=keys, admission=admission)
    transport.connect("p2", "tcp://10.0.0.6:7000")       # dials p2 as a curve client of its key
    admission.admit("p3", p3_public_key)                  # takes effect at p3's next handshake

How a message's sender is known: on an accepted handshake the ZAP reply's User-Id is the client's
z85 public key (`zmq.auth.Authenticator.curve_user_id`), and libzmq attaches it to every message
of that connection as the frame property "User-Id". `ZmqTransport` maps it back to a name through
`Admission.name_of`, so the sender of a message is the key that authenticated its connection,
never what the message's header says.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.base import Authenticator
from zmq.utils import z85

__all__ = ["CurveKeys", "load_or_create_keys", "check_curve_key", "Admission", "ZapHandler", "ZAP_DOMAIN",
           "curve_server", "curve_client"]

log = logging.getLogger(__name__)

# The ZAP domain of every swarm data port: a context's handler answers only for it.
ZAP_DOMAIN = "swarm"
_KEY_CHARS = 40
# Handshakes that fail before ZAP is asked, one event per connection: a client without CURVE is reported
# as a mechanism mismatch, or as a hang-up when it noticed the mismatch first; garbage as a protocol error.
_FAILED_HANDSHAKE = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def check_curve_key(key: object, what: str = "curve public key") -> str:
    """Return `key` if it is a z85-encoded 32-byte curve key (40 characters), else raise ValueError."""
    if isinstance(key, str) and len(key) == _KEY_CHARS:
        try:
            if len(z85.decode(key)) == 32:
                return key
        except (ValueError, KeyError, TypeError, OverflowError, struct.error):
            pass
    raise ValueError(f"{what} must be a z85-encoded curve key of {_KEY_CHARS} characters "
                     f"(as zmq.curve_keypair() makes), got {key!r}")


@dataclass(frozen=True)
class CurveKeys:
    """An endpoint's curve key pair, both halves z85 strings of 40 characters.

    `public` is what others admit (and dial as `server_key`); `secret` never leaves this process
    and is kept out of the repr so it cannot end up in a log.
    """

    public: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        check_curve_key(self.public, "public curve key")
        check_curve_key(self.secret, "secret curve key")
        if zmq.curve_public(self.secret.encode()).decode() != self.public:
            raise ValueError("the public curve key does not belong to the secret key")

    @classmethod
    def generate(cls) -> CurveKeys:
        """A fresh key pair from libzmq (`zmq.curve_keypair()`)."""
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())


def load_or_create_keys(path: Path) -> CurveKeys:
    """The key pair in JSON file `path` ({"public": ..., "secret": ...}), created if missing.

    A new file is written with mode 0600 and appears atomically (a concurrent creator's file wins,
    and both callers then use it). An existing file readable by group or others is used, with a
    warning to `chmod 600` it. A malformed file raises ValueError naming the path: it is never
    overwritten, since peers may already admit the key it held.
    """
    path = Path(path)
    if not path.exists():
        _create_keys(path, CurveKeys.generate())
    mode = path.stat().st_mode
    if mode & 0o077:
        log.warning("curve key file %s is readable by other users (mode %o): run `chmod 600 %s`",
                    path, mode & 0o777, path)
    try:
        data = json.loads(path.read_text())
        return CurveKeys(data["public"], data["secret"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"curve key file {path} is not a JSON object {{\"public\": ..., \"secret\": ...}} of "
                         f"z85 keys ({error}); restore it, or move it away to create a new key pair") from None


class Admission:
    """The curve public keys that may talk to an endpoint, and the peer name each belongs to.

    Thread-safe: the coordinator's plan updates it from the control thread while the transport's
    loop thread consults it at every handshake and every message. Names and keys are one-to-one:
    admitting a key under a new name moves it there (the old name loses its key), and giving a
    name a new key drops its old key, so a key always authenticates as exactly one name.

    keys: name -> z85 curve public key.
    """

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self.update(keys or {})

    def update(self, keys: Mapping[str, str]) -> None:
        """Replace the whole registry with `keys` (name -> key); ValueError if a key has two names."""
        names: dict[str, str] = {}
        for name, key in keys.items():
            check_curve_key(key, f"curve key of {name!r}")
            if key in names:
                raise ValueError(f"peers {names[key]!r} and {name!r} have the same curve key; a key admits one name")
            names[key] = name
        with self._lock:
            self._keys = dict(keys)
            self._names = names

    def admit(self, name: str, key: str) -> None:
        """Let `key` in as peer `name` from the next handshake on (replacing either's old binding)."""
        check_curve_key(key, f"curve key of {name!r}")
        with self._lock:
            old_name = self._names.pop(key, None)
            if old_name is not None:
                del self._keys[old_name]
            old_key = self._keys.pop(name, None)
            if old_key is not None:
                del self._names[old_key]
            self._keys[name] = key
            self._names[key] = name

    def revoke(self, name: str) -> None:
        """Stop admitting peer `name` (its open connections' messages are refused from now on)."""
        with self._lock:
            key = self._keys.pop(name, None)
            if key is not None:
                del self._names[key]

    def name_of(self, public_key: str) -> str | None:
        """The admitted name of `public_key`, or None if it is not admitted."""
        with self._lock:
            return self._names.get(public_key)

    def key_of(self, name: str) -> str | None:
        """The admitted key of peer `name`, or None."""
        with self._lock:
            return self._keys.get(name)

    def snapshot(self) -> dict[str, str]:
        """A copy of the registry: name -> key."""
        with self._lock:
            return dict(self._keys)

    def __contains__(self, public_key: object) -> bool:
        with self._lock:
            return public_key in self._names

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)


class ZapHandler:
    """The ZAP handler of one zmq context: CURVE clients whose key `admission` holds, nothing else.

    Runs on the event loop that drives the context's sockets (`start` and `stop` are called there),
    consulting `admission` live, so a key admitted later gets in at its next handshake. Every
    refused handshake calls `on_reject(detail)`: those ZAP refuses (unknown key), and, for the
    sockets given to `watch`, those that fail before ZAP is asked (a plain client, garbage).
    The decisions are pyzmq's `zmq.auth.Authenticator` with this object as its curve credentials
    provider; this class only serves its ZAP socket on the loop, as an asyncio socket.
    """

    def __init__(self, context: zmq.asyncio.Context, admission: Admission, on_reject: Callable[[str], None], *,
                 domain: str = ZAP_DOMAIN) -> None:
        self.admission = admission
        self._on_reject = on_reject
        self._context = context
        self._authenticator = Authenticator(context, log=logging.getLogger(f"{__name__}.zap"))
        self._authenticator.configure_curve_callback(domain, self)
        self._tasks: list[asyncio.Task[None]] = []
        self._sockets: list[Any] = []  # the ZAP socket, then the monitors
        self._watched: list[Any] = []

    def start(self) -> None:
        """Bind the context's ZAP endpoint; call before any server socket of the context binds."""
        zap = self._context.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind("inproc://zeromq.zap.01")  # the endpoint libzmq asks (RFC 27); one handler per context
        self._authenticator.zap_socket = zap
        self._sockets.append(zap)
        self._tasks.append(asyncio.ensure_future(self._serve(zap)))

    def callback(self, domain: str, key: bytes) -> bool:
        """zmq.auth's credentials provider: is the client's z85 `key` admitted?"""
        public = key.decode("ascii", "replace")
        if public in self.admission:
            return True
        self._on_reject(f"handshake refused: curve key {public} is not admitted")
        return False

    def watch(self, sock: Any) -> None:
        """Count handshakes on server socket `sock` that fail before ZAP sees them."""
        monitor = sock.get_monitor_socket(_FAILED_HANDSHAKE)
        self._watched.append(sock)
        self._sockets.append(monitor)
        self._tasks.append(asyncio.ensure_future(self._watch(monitor)))

    async def stop(self) -> None:
        """Unbind the ZAP endpoint and stop watching (before the watched sockets close)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # off the sockets before they close
        for sock in self._watched:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        for sock in self._sockets:
            sock.close(linger=0)
        self._tasks, self._sockets, self._watched = [], [], []

    async def _serve(self, zap: Any) -> None:
        while True:
            request = await zap.recv_multipart()
            try:
                await self._authenticator.handle_zap_message(request)
            except Exception:  # a bug here must not stop all later handshakes
                log.exception("ZAP request failed; that client's handshake stays unanswered")

    async def _watch(self, monitor: Any) -> None:
        while True:
            frames = await monitor.recv_multipart()
            event, value = struct.unpack("=HI", frames[0][:6])
            if event != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self._on_reject(f"handshake failed: the client hung up (errno {value}); a client without CURVE "
                                f"does that, this data port requires it")
            elif value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self._on_reject("handshake refused: the client does not use CURVE (this data port requires it)")
            else:
                self._on_reject(f"handshake refused: zmq protocol error {value:#x}")


def curve_server(sock: zmq.Socket[Any], keys: CurveKeys, domain: str = ZAP_DOMAIN) -> None:
    """Make `sock` (before it binds) a CURVE server with `keys`, authenticated by ZAP `domain`."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode())
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def curve_client(sock: zmq.Socket[Any], keys: CurveKeys, server_key: str) -> None:
    """Make `sock` (before it connects) a CURVE client with `keys` of the server with `server_key`."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, check_curve_key(server_key, "server curve key").encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode())


def _create_keys(path: Path, keys: CurveKeys) -> None:
    """Write `keys` to a new file `path` (mode 0600) unless someone else created it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump({"public": keys.public, "secret": keys.secret}, file)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)  # fails if the file exists: never replaces a key pair
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
