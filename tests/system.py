"""System tools a test needs (a browser, a firewall): found on PATH, else installed with Debian's apt-get.

CI runs on a fresh machine as root, so what a test needs from the system is installed by the test
itself, once per process, and a test that still cannot have it is told why in one line.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess

__all__ = ["ensure_command"]


@functools.cache
def ensure_command(command: str, package: str) -> tuple[str | None, str]:
    """(path of `command`, "") or (None, why there is none); installs Debian's `package` when it is missing."""
    found = shutil.which(command)
    if found:
        return found, ""
    if not shutil.which("apt-get"):
        return None, f"{command} is not installed and there is no apt-get to install {package}"
    if os.geteuid() != 0:
        return None, f"{command} is not installed and installing {package} with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step, limit in ((["apt-get", "update"], 300), (["apt-get", "install", "-y", package], 900)):
        try:
            result = subprocess.run(step, capture_output=True, text=True, timeout=limit, env=env)
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(step)}` did not finish within {limit} s"
        if result.returncode != 0:
            return None, f"`{' '.join(step)}` failed: {(result.stderr or result.stdout)[-400:]}"
    found = shutil.which(command)
    return (found, "") if found else (None, f"apt-get installed {package} but no {command} is on PATH")
