"""The coordinator's live dashboard (`swarm-coordinator --http HOST:PORT`): a page and its JSON API.

`DashboardServer` serves the page and its assets (package data under `static/`, nothing from any
other host), `/api/status` (`swarm status --json`), `/api/history` and `/metrics`, on a thread of
the coordinator's process. The charts are hand-drawn SVG (`static/charts.js`); the page polls.
"""
from .server import DashboardServer, DashboardSource

__all__ = ["DashboardServer", "DashboardSource"]
