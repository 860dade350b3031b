"""The dashboard's HTTP server: stdlib `ThreadingHTTPServer` on a daemon thread.

    server = DashboardServer("127.0.0.1", 0, source)   # source: status(), history(limit), exposition()
    url = server.start()                               # http://127.0.0.1:PORT/
    server.stop()

Routes: `/` (the page), `/static/NAME` (its script and style sheet, package data), `/api/status`,
`/api/history[?limit=N]` (JSON, non-finite numbers as null), `/metrics` (Prometheus text),
`/healthz`. Only GET and HEAD; anything else is 404 or 405. Every asset comes from this server.
"""
from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

__all__ = ["DashboardServer", "DashboardSource", "ASSETS", "json_safe"]

log = logging.getLogger(__name__)

# URL path -> (file under static/, content type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class DashboardSource(Protocol):
    """Where the dashboard's data comes from (the coordinator's telemetry)."""

    def status(self) -> dict[str, Any]: ...

    def history(self, limit: int | None = None) -> dict[str, Any]: ...

    def exposition(self) -> tuple[bytes, str]: ...


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None: what browsers' JSON.parse accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


class DashboardServer:
    """Serves `source` at http://HOST:PORT/ until `stop()`; port 0 picks a free one."""

    def __init__(self, host: str, port: int, source: DashboardSource) -> None:
        self.host, self.port, self.source = host, port, source
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._assets = {name: (resources.files(__package__) / "static" / name).read_bytes()
                        for name, _ in ASSETS.values()}

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the page (a wildcard host shows as loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://{host}:{self.port}/"

    def start(self) -> str:
        """Bind and serve on a daemon thread; the page's URL. ValueError naming `--http` when the
        address cannot be bound."""
        handler = type("DashboardHandler", (_Handler,), {"source": self.source, "assets": self._assets})
        try:
            self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as error:
            raise ValueError(f"--http {self.host}:{self.port}: cannot listen there: {error}; pick a free port "
                             "or an address of this machine") from None
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="dashboard", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._httpd = self._thread = None


class _Handler(BaseHTTPRequestHandler):
    source: DashboardSource
    assets: dict[str, bytes]
    server_version = "swarm-dashboard"

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_POST(self) -> None:
        self._send(405, b"only GET and HEAD\n", "text/plain; charset=utf-8", head=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        try:
            if url.path in ASSETS:
                name, kind = ASSETS[url.path]
                self._send(200, self.assets[name], kind, head, cache="no-cache")
            elif url.path == "/api/status":
                self._json(self.source.status(), head)
            elif url.path == "/api/history":
                self._json(self.source.history(_limit(url.query)), head)
            elif url.path == "/metrics":
                body, kind = self.source.exposition()
                self._send(200, body, kind, head)
            elif url.path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8", head)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", head)
        except ValueError as error:
            self._send(400, f"{error}\n".encode(), "text/plain; charset=utf-8", head)
        except Exception as error:  # the DHT is starting or stopping: say so, keep serving
            log.debug("dashboard request %s failed: %s", self.path, error)
            self._send(503, f"not available right now: {error}\n".encode(), "text/plain; charset=utf-8", head)

    def _json(self, value: Any, head: bool) -> None:
        body = json.dumps(json_safe(value), allow_nan=False).encode()
        self._send(200, body, "application/json", head)

    def _send(self, code: int, body: bytes, kind: str, head: bool, cache: str = "no-store") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the browser went away
                pass


def _limit(query: str) -> int | None:
    """`?limit=N` of /api/history (None: every step)."""
    values = parse_qs(query).get("limit")
    if not values:
        return None
    if not values[0].isdigit():
        raise ValueError(f"limit must be a non-negative integer, got {values[0]!r}")
    return int(values[0])
