"""Atomic checkpoints: a directory per step, published by renaming, indexed by `latest.json`.

A checkpoint of step k holds each stage's state blob (what `StateServer` serves: parameters and
optimizer, as the peers serialised them), each cell's codec state blob (error-feedback residuals
and AQ-SGD memories: a resumed grid that is the same grid continues exactly where it stopped),
the sha256 of every blob (checked when it is read back) and the plan it was taken under. It is written into a
temporary directory, flushed, renamed into place, and only then named in `latest.json` (itself
replaced atomically), so a crash at any instant leaves the previous checkpoint intact and
`--resume` never reads half a checkpoint. The two newest checkpoints are kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers.daemon.stage_state import codec_slot, unpack_state
from peers.security import CurveKeys
from peers.state_transfer import StateTransferError, fetch_state

__all__ = ["Checkpoint", "StageUnavailable", "fetch_stage", "fetch_stages", "fetch_codec_states", "write_checkpoint",
           "read_latest", "write_json_atomic", "KEEP"]

log = logging.getLogger(__name__)

KEEP = 2
_RETRY_S = 0.05


@dataclass(frozen=True)
class Checkpoint:
    """step: the last step applied in it; plan: the plan record (wire dict) it was taken under;
    codec: the codec state blob of each (stage, replica) cell of that plan's grid that served one."""

    step: int
    path: Path
    plan: dict[str, Any]
    stages: dict[int, bytes]
    codec: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def layers_for(self, layers: list[int]) -> list[int]:
        """The split a restore of a plan with `layers` must use: the one this checkpoint's stages were saved
        under (a re-split after it cannot be loaded from it), when the stage count is the same."""
        saved = [int(n) for n in self.plan["layers"]]
        return saved if len(saved) == len(layers) else layers

    def codec_for(self, grid: Sequence[Sequence[str]]) -> bool:
        """Whether a plan with `grid` can resume every cell's codec state: the same grid, every cell held."""
        same = [list(row) for row in grid] == [list(row) for row in self.plan["grid"]]
        return same and len(self.codec) == sum(len(row) for row in grid)


Donor = tuple[str, str | None]  # a replica's data address and its curve key (None in an open swarm)


def fetch_stage(donors: Sequence[Donor], slot: int, step: int, patience: float, keys: CurveKeys | None = None,
                ) -> bytes | None:
    """The blob at `slot` (a stage, or a cell's `codec_slot`) after `step` from any of `donors`, or None
    after `patience` s; `keys`: ours.

    Donors are tried in turn, starting at one picked by `slot` to spread the load. Each try
    gets a share of the patience, so a replica that is just leaving (and never answers) cannot
    hold the coordinator's loop - and so its view of that leave - for all of it.
    """
    deadline = time.monotonic() + patience
    share = patience / (2 * len(donors))
    attempt = 0
    while time.monotonic() < deadline:
        donor, server_key = donors[(slot + attempt) % len(donors)]
        attempt += 1
        try:
            blob = fetch_state(donor, slot, timeout=max(0.5, min(share, deadline - time.monotonic())), keys=keys,
                               server_key=server_key)
            if unpack_state(blob).step == step:
                return blob
        except (StateTransferError, ValueError) as error:
            log.debug("checkpoint fetch of slot %d from %s: %s", slot, donor, error)
        time.sleep(_RETRY_S)
    return None


class StageUnavailable(RuntimeError):
    """No replica of a stage served its state of the checkpoint's step in time."""

    def __init__(self, stage: int) -> None:
        super().__init__(f"no replica of stage {stage} served it")
        self.stage = stage


def fetch_stages(replicas: Sequence[Sequence[Donor]], step: int, patience: float, keys: CurveKeys | None = None,
                 ) -> dict[int, bytes]:
    """Every stage's blob of `step`; `replicas[s]` are stage s's replicas (address, curve key).

    Raises StageUnavailable for the first stage none of whose replicas served it."""
    blobs: dict[int, bytes] = {}
    for stage, donors in enumerate(replicas):
        blob = fetch_stage(donors, stage, step, patience, keys)
        if blob is None:
            raise StageUnavailable(stage)
        blobs[stage] = blob
    return blobs


def fetch_codec_states(replicas: Sequence[Sequence[Donor]], step: int, patience: float,
                       keys: CurveKeys | None = None) -> dict[tuple[int, int], bytes]:
    """Each cell's codec state of `step`, from that cell's own peer; cells that did not serve it in
    `patience` s are left out (a resume then starts fresh codec state, see `Checkpoint.codec_for`)."""
    found: dict[tuple[int, int], bytes] = {}
    for stage, row in enumerate(replicas):
        for replica, donor in enumerate(row):
            blob = fetch_stage([donor], codec_slot(stage, replica), step, patience, keys)
            if blob is not None:
                found[stage, replica] = blob
    return found


def write_checkpoint(directory: Path, step: int, plan: dict[str, Any], stages: dict[int, bytes],
                     codec: dict[tuple[int, int], bytes] | None = None) -> Path:
    """Write and publish the checkpoint of `step`; returns its directory."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = directory / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {f"stage-{stage}.bin": blob for stage, blob in stages.items()}
    files.update({f"codec-{stage}-{replica}.bin": blob for (stage, replica), blob in (codec or {}).items()})
    for name, blob in files.items():
        _write_file(tmp / name, blob)
    meta = {"step": step, "plan": plan, "stages": sorted(stages), "codec": sorted(codec or {}),
            "sha256": {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}}
    _write_file(tmp / "meta.json", json.dumps(meta).encode())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(directory)
    write_json_atomic(directory / "latest.json", {"step": step, "path": final.name})
    # prune by age relative to this one: a newer directory left by an abandoned timeline (a crash
    # after its rename, before `latest.json`) must not push the checkpoint just named out of KEEP
    for old in [path for path in sorted(directory.glob("step-*")) if path.name < final.name][:1 - KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_latest(directory: Path) -> Checkpoint:
    """The checkpoint `latest.json` names; ValueError saying what is wrong (and which flag) otherwise."""
    index = directory / "latest.json"
    try:
        latest = json.loads(index.read_text())
        path = directory / str(latest["path"])
        meta = json.loads((path / "meta.json").read_text())
        digests = meta.get("sha256", {})

        def read(name: str) -> bytes:
            blob = (path / name).read_bytes()
            if name in digests and hashlib.sha256(blob).hexdigest() != digests[name]:
                raise ValueError(f"{path / name} does not match its sha256 in meta.json (corrupted on disk)")
            return blob

        stages = {int(s): read(f"stage-{int(s)}.bin") for s in meta["stages"]}
        codec = {(int(s), int(r)): read(f"codec-{int(s)}-{int(r)}.bin") for s, r in meta.get("codec", [])}
        return Checkpoint(step=int(meta["step"]), path=path, plan=meta["plan"], stages=stages, codec=codec)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--resume: cannot read the checkpoint named by {index}: {error}") from None


def write_json_atomic(path: Path, value: Any) -> None:
    """Replace `path` with `value` as JSON so readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_file(tmp, json.dumps(value, indent=1).encode())
    tmp.replace(path)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
