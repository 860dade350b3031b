"""Scenario: the devices, their network and the training job the scheduler plans for.

A scenario is what `swarm-sim plan` reads and what the coordinator builds from live peer records.
Its JSON format is a contract shared with those tools; `Scenario.from_dict` checks every field
(schema.py) and raises `ScenarioError` naming the offending one, so a bad file fails at load
time, never deep inside the search.

Links are between sites. A coordinator that measured each pair of peers puts every peer in its
own site (`Scenario.from_measurements`), so one representation serves both and the network stays
O(sites^2) even for 10,000 devices.
"""
from __future__ import annotations

import statistics
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Mapping

import msgspec

from swarm.scheduler.job import BatchSizes, Compression, Control, ModelSpec, Parallelism
from swarm.scheduler.network import Network
from swarm.scheduler.schema import Name, NonNegative, Positive, Record, convert, load_json

__all__ = [
    "ScenarioError", "Device", "Site", "Link", "ModelSpec", "BatchSizes", "Compression", "Parallelism", "Control",
    "Scenario", "preset_names",
]


class ScenarioError(ValueError):
    """A scenario or plan file that cannot be used; the message names the field and the fix."""


class Device(Record, frozen=True, omit_defaults=True):
    """One GPU: sustained TFLOPS, memory, its own uplink cap (None: only the site's link), and how fast
    it runs the codecs: `codec_gvalues`, billions of values per second through one codec pass (an
    encode or a decode). Every message is encoded by its sender and decoded by its receiver on the
    device that computes, so on a slow CPU the codecs cost as much as the compute. None: codec time
    is not priced (a GPU's codecs are a rounding error next to its links; the presets leave it out).
    """

    id: Name
    site: Name
    tflops: Positive
    memory_gb: Positive
    uplink_gbps: Positive | None = None
    codec_gvalues: Positive | None = None


class Site(Record, frozen=True):
    """A site's own link: what two devices of the site see between them."""

    bandwidth_gbps: Positive
    latency_ms: NonNegative


class Link(Record, frozen=True):
    """The link between two different sites."""

    between: tuple[Name, Name]
    bandwidth_gbps: Positive
    latency_ms: NonNegative

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.between[0] == self.between[1]:
            raise ValueError(f"between: a link joins two different sites (the site's own link is "
                             f"sites.{self.between[0]})")


class Scenario(Record, frozen=True, kw_only=True, omit_defaults=True, dict=True):
    """A validated scenario. Build it with `from_dict`, `load`, `preset` or `from_measurements`."""

    name: Name
    devices: Annotated[tuple[Device, ...], msgspec.Meta(min_length=1)]
    sites: Annotated[dict[str, Site], msgspec.Meta(min_length=1)]
    links: tuple[Link, ...] = ()
    model: ModelSpec
    batch: BatchSizes
    compression: Compression = Compression()
    parallelism: Parallelism | None = None
    control: Control = Control()

    def __post_init__(self) -> None:
        """The rules that span fields: ids, site names, the grid's fit, a link per site pair."""
        super().__post_init__()
        seen: set[str] = set()
        for i, device in enumerate(self.devices):
            if device.id in seen:
                raise ScenarioError(f"duplicate id {device.id!r}; ids must be unique - at `$.devices[{i}].id`")
            seen.add(device.id)
            if device.site not in self.sites:
                raise ScenarioError(f"unknown site {device.site!r}; add it to \"sites\" - at `$.devices[{i}].site`")
        for i, link in enumerate(self.links):
            for site in link.between:
                if site not in self.sites:
                    raise ScenarioError(f"unknown site {site!r}; add it to \"sites\" - at `$.links[{i}].between`")
        if self.parallelism is not None:
            self._check_parallelism(self.parallelism)
        _ = self.network  # built now, so a missing link fails at load time

    def _check_parallelism(self, grid: Parallelism) -> None:
        model, batch, devices = self.model, self.batch, len(self.devices)
        if grid.stages > model.layers:
            raise ScenarioError(f"{model.layers} layers cannot be split into {grid.stages} stages; use at "
                                f"most {model.layers} - at `$.parallelism.stages`")
        if grid.stages * grid.replicas > devices:
            raise ScenarioError(f"{grid.stages} x {grid.replicas} needs {grid.stages * grid.replicas} devices, "
                                f"the scenario has {devices} - at `$.parallelism`")
        if grid.replicas * batch.micro_sequences > batch.global_sequences:
            raise ScenarioError(f"{grid.replicas} pipelines need at least one micro-batch each; "
                                f"global_sequences is {batch.global_sequences} - at `$.parallelism.replicas`")

    @classmethod
    def from_dict(cls, data: Any) -> Scenario:
        """Parse and check a scenario dict (decoded scenario JSON)."""
        return convert(data, cls, "scenario", ScenarioError)

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        """Read a scenario JSON file; errors name the file and the field."""
        return load_json(path, "scenario", cls.from_dict, ScenarioError)

    @classmethod
    def preset(cls, name: str) -> Scenario:
        """One of the packaged scenarios, e.g. `dtfm-5` (DT-FM's world-wide case)."""
        if name not in preset_names():
            raise ScenarioError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
        text = resources.files("swarm").joinpath("presets", f"{name}.json").read_bytes()
        return cls.from_dict(msgspec.json.decode(text))

    @classmethod
    def from_measurements(cls, name: str, devices: list[dict[str, Any]],
                          measured: Mapping[tuple[str, str], tuple[float, float]],
                          model: dict[str, Any], batch: dict[str, Any], compression: dict[str, Any] | None = None,
                          parallelism: dict[str, Any] | None = None,
                          fallback: tuple[float, float] = (0.1, 100.0),
                          control: dict[str, Any] | None = None) -> Scenario:
        """A scenario with one site per device, from measured (bandwidth_gbps, latency_ms) pairs.

        This is what the coordinator builds from live peer records: `devices` are dicts with id,
        tflops, memory_gb and optionally uplink_gbps and codec_gvalues (their `site` is ignored);
        `control` is the scenario's control section (the measured commit round trip). A pair nobody
        measured gets the worse of its two ends' typical (median) measured links, or `fallback`
        when an end measured none: a guess no better than what the peers are known to get, so
        that moving a peer onto an unmeasured link never looks like a gain in itself.
        """
        ids = [str(d["id"]) for d in devices]
        sites = {i: {"bandwidth_gbps": 1000.0, "latency_ms": 0.0} for i in ids}
        typical = _typical_links(ids, measured)
        links = []
        for a_index, a in enumerate(ids):
            for b in ids[a_index + 1:]:
                guess = fallback
                if a in typical and b in typical:
                    guess = (min(typical[a][0], typical[b][0]), max(typical[a][1], typical[b][1]))
                bandwidth, latency = measured.get((a, b)) or measured.get((b, a)) or guess
                links.append({"between": [a, b], "bandwidth_gbps": bandwidth, "latency_ms": latency})
        data: dict[str, Any] = {
            "name": name, "sites": sites, "links": links, "model": model, "batch": batch,
            "devices": [{**{k: v for k, v in d.items() if k != "site"}, "site": str(d["id"])} for d in devices]}
        if compression is not None:
            data["compression"] = compression
        if parallelism is not None:
            data["parallelism"] = parallelism
        if control is not None:
            data["control"] = control
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The scenario as JSON-ready data; `from_dict(to_dict())` gives an equal scenario."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data

    def save(self, path: str | Path) -> None:
        """Write the scenario file (JSON) to `path`."""
        Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(self), indent=1) + b"\n")

    def with_devices(self, devices: list[Device] | tuple[Device, ...]) -> Scenario:
        """The same job and network with another device set (peers joined, left or changed).

        A fixed `parallelism` keeps its stages and loses the replicas the devices cannot fill.
        The devices are checked like a file's, whoever built them.
        """
        data = self.to_dict()
        data["devices"] = msgspec.to_builtins(list(devices))
        if self.parallelism is not None:
            stages = self.parallelism.stages
            if len(devices) < stages:
                raise ScenarioError(f"parallelism.stages: {len(devices)} devices cannot hold {stages} stages")
            data["parallelism"]["replicas"] = min(self.parallelism.replicas, len(devices) // stages)
        return Scenario.from_dict(data)

    @cached_property
    def network(self) -> Network:
        """Site-level bandwidth/latency matrices plus per-device uplinks (built once)."""
        names = list(self.sites)
        pairs: dict[frozenset[str], Link] = {}
        for i, link in enumerate(self.links):
            key = frozenset(link.between)
            if key in pairs:
                raise ScenarioError(f"a second link between {link.between[0]!r} and {link.between[1]!r} "
                                    f"- at `$.links[{i}]`")
            pairs[key] = link
        position = {name: i for i, name in enumerate(names)}
        used = sorted({d.site for d in self.devices}, key=position.__getitem__)
        for a_index, a in enumerate(used):
            for b in used[a_index + 1:]:
                if frozenset((a, b)) not in pairs:
                    raise ScenarioError(f"no link between sites {a!r} and {b!r}; add {{\"between\": [\"{a}\", "
                                        f"\"{b}\"], \"bandwidth_gbps\": ..., \"latency_ms\": ...}} - at `$.links`")
        return Network.build(names, self.sites, pairs.values(), self.devices)

    @property
    def index(self) -> dict[str, int]:
        """Device id -> position in `devices` (the numbering the cost models use)."""
        return {d.id: i for i, d in enumerate(self.devices)}


def _typical_links(ids: list[str], measured: Mapping[tuple[str, str], tuple[float, float]]
                   ) -> dict[str, tuple[float, float]]:
    """Each device's median measured (bandwidth_gbps, latency_ms) over the pairs it is in."""
    known = set(ids)
    seen: dict[str, list[tuple[float, float]]] = {}
    for (a, b), link in measured.items():
        if a in known and b in known and a != b:
            seen.setdefault(a, []).append(link)
            seen.setdefault(b, []).append(link)
    return {name: (statistics.median(bw for bw, _ in links), statistics.median(lat for _, lat in links))
            for name, links in seen.items()}


def preset_names() -> list[str]:
    """Names of the packaged scenarios (`swarm/presets/*.json`)."""
    folder = resources.files("swarm").joinpath("presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))
