"""Scenario: the devices, their network and the training job the scheduler plans for.

A scenario is what `swarm-sim plan` reads and what the coordinator builds from live peer records.
The JSON format is the contract of DESIGN.md section 3; `Scenario.from_dict` checks every field and
raises `ScenarioError` naming the offending one (`devices[3].site: unknown site 'x'`), so a bad
file fails at load time, never deep inside the search.

Links are between sites. A coordinator that measured each pair of peers puts every peer in its
own site (`Scenario.from_measurements`), so one representation serves both and the network stays
O(sites^2) even for 10,000 devices.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from swarm.scheduler.network import Network

__all__ = [
    "ScenarioError", "Device", "Site", "Link", "ModelSpec", "Batch", "Compression", "Parallelism",
    "Scenario", "preset_names", "load_json",
]

_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
T = TypeVar("T")


class ScenarioError(ValueError):
    """A scenario or plan file that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class Device:
    """One GPU: sustained TFLOPS, memory, and its own uplink cap (None: only the site's link)."""

    id: str
    site: str
    tflops: float
    memory_gb: float
    uplink_gbps: float | None = None


@dataclass(frozen=True)
class Site:
    bandwidth_gbps: float
    latency_ms: float


@dataclass(frozen=True)
class Link:
    between: tuple[str, str]
    bandwidth_gbps: float
    latency_ms: float


@dataclass(frozen=True)
class ModelSpec:
    layers: int
    d_model: int
    heads: int
    seq_len: int
    vocab: int


@dataclass(frozen=True)
class Batch:
    global_sequences: int
    micro_sequences: int = 1


@dataclass(frozen=True)
class Compression:
    """Bit-widths per channel; 16 means plain fp16 (the DT-FM setting)."""

    forward_bits: int = 16
    backward_bits: int = 16
    gradient_bits: int = 16


@dataclass(frozen=True)
class Parallelism:
    stages: int
    replicas: int


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. Build it with `from_dict`, `load`, `preset` or `from_measurements`."""

    name: str
    devices: tuple[Device, ...]
    sites: Mapping[str, Site]
    links: tuple[Link, ...]
    model: ModelSpec
    batch: Batch
    compression: Compression = Compression()
    parallelism: Parallelism | None = None
    _network: list = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Scenario":
        """Parse and check a scenario dict (the JSON of DESIGN.md section 3)."""
        root = _Fields(data, "scenario", required=("name", "devices", "sites", "model", "batch"),
                       optional=("links", "compression", "parallelism"))
        name = root.string("name")
        sites = {key: _site(value, f"sites.{key}") for key, value in root.mapping("sites").items()}
        devices = tuple(_device(item, f"devices[{i}]", sites)
                        for i, item in enumerate(root.sequence("devices")))
        if not devices:
            raise ScenarioError("scenario.devices: expected at least one device")
        seen: set[str] = set()
        for i, device in enumerate(devices):
            if device.id in seen:
                raise ScenarioError(f"devices[{i}].id: duplicate id {device.id!r}; ids must be unique")
            seen.add(device.id)
        links = tuple(_link(item, f"links[{i}]", sites)
                      for i, item in enumerate(root.sequence("links", default=[])))
        model = _model(root.get("model"))
        batch = _batch(root.get("batch"))
        compression = _compression(root.get("compression", {}))
        parallelism = _parallelism(root.get("parallelism"), model, batch, len(devices))
        scenario = cls(name, devices, sites, links, model, batch, compression, parallelism)
        scenario.network  # builds the matrices now so a missing link fails at load time
        return scenario

    @classmethod
    def load(cls, path: str | Path) -> "Scenario":
        """Read a scenario JSON file; errors name the file and the field."""
        return load_json(path, "scenario", cls.from_dict, ScenarioError)

    @classmethod
    def preset(cls, name: str) -> "Scenario":
        """One of the packaged scenarios, e.g. `dtfm-5` (DT-FM's world-wide case)."""
        if name not in preset_names():
            raise ScenarioError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
        text = resources.files("swarm").joinpath("presets", f"{name}.json").read_text()
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_measurements(cls, name: str, devices: list[dict], measured: Mapping[tuple[str, str], tuple[float, float]],
                          model: dict, batch: dict, compression: dict | None = None,
                          parallelism: dict | None = None,
                          fallback: tuple[float, float] = (0.1, 100.0)) -> "Scenario":
        """A scenario with one site per device, from measured (bandwidth_gbps, latency_ms) pairs.

        This is what the coordinator builds from live peer records: `devices` are dicts with id,
        tflops, memory_gb and optionally uplink_gbps (their `site` is ignored); pairs not
        measured get `fallback`, a pessimistic guess so the planner avoids unknown links.
        """
        ids = [str(d["id"]) for d in devices]
        sites = {i: {"bandwidth_gbps": 1000.0, "latency_ms": 0.0} for i in ids}
        links = []
        for a_index, a in enumerate(ids):
            for b in ids[a_index + 1:]:
                bandwidth, latency = measured.get((a, b)) or measured.get((b, a)) or fallback
                links.append({"between": [a, b], "bandwidth_gbps": bandwidth, "latency_ms": latency})
        data = {"name": name, "sites": sites, "links": links, "model": model, "batch": batch,
                "devices": [{**{k: v for k, v in d.items() if k != "site"}, "site": str(d["id"])}
                            for d in devices]}
        if compression is not None:
            data["compression"] = compression
        if parallelism is not None:
            data["parallelism"] = parallelism
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The scenario as JSON-ready data; `from_dict(to_dict())` gives an equal scenario."""
        data: dict[str, Any] = {
            "name": self.name,
            "devices": [_device_dict(d) for d in self.devices],
            "sites": {k: {"bandwidth_gbps": s.bandwidth_gbps, "latency_ms": s.latency_ms}
                      for k, s in self.sites.items()},
            "links": [{"between": list(l.between), "bandwidth_gbps": l.bandwidth_gbps,
                       "latency_ms": l.latency_ms} for l in self.links],
            "model": vars(self.model).copy(),
            "batch": vars(self.batch).copy(),
            "compression": vars(self.compression).copy(),
        }
        if self.parallelism is not None:
            data["parallelism"] = vars(self.parallelism).copy()
        return data

    def save(self, path: str | Path) -> None:
        """Write the scenario file (JSON) to `path`."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def with_devices(self, devices: list[Device] | tuple[Device, ...]) -> "Scenario":
        """The same job and network with another device set (peers joined, left or changed).

        A fixed `parallelism` keeps its stages and loses the replicas the devices cannot fill.
        """
        data = self.to_dict()
        data["devices"] = [_device_dict(d) for d in devices]
        if self.parallelism is not None:
            stages = self.parallelism.stages
            if len(devices) < stages:
                raise ScenarioError(f"parallelism.stages: {len(devices)} devices cannot hold {stages} stages")
            data["parallelism"]["replicas"] = min(self.parallelism.replicas, len(devices) // stages)
        return Scenario.from_dict(data)

    @property
    def network(self) -> Network:
        """Site-level bandwidth/latency matrices plus per-device uplinks (built once)."""
        if not self._network:
            self._network.append(_build_network(self))
        return self._network[0]

    @property
    def index(self) -> dict[str, int]:
        """Device id -> position in `devices` (the numbering the cost models use)."""
        return {d.id: i for i, d in enumerate(self.devices)}


def preset_names() -> list[str]:
    """Names of the packaged scenarios (`swarm/presets/*.json`)."""
    folder = resources.files("swarm").joinpath("presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_json(path: str | Path, what: str, parse: Callable[[Any], T], error: type[ScenarioError]) -> T:
    """`parse` of the JSON in `path`; any problem raises `error` naming the file (shared with plans)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as problem:
        raise error(f"cannot read {what} file {path}: {problem.strerror}") from None
    except json.JSONDecodeError as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None
    try:
        return parse(data)
    except ScenarioError as problem:
        raise error(f"{path}: {problem}") from None


class _Fields:
    """Reads one JSON object, rejecting unknown keys and wrong types with the field's path."""

    def __init__(self, data: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(required) - set(optional))
        if unknown:
            raise ScenarioError(f"{path}: unknown field {unknown[0]!r}; allowed: {', '.join(required + optional)}")
        missing = [key for key in required if key not in data]
        if missing:
            raise ScenarioError(f"{path}.{missing[0]}: required field is missing")
        self.data, self.path = data, path

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def string(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not value:
            raise ScenarioError(f"{self.path}.{key}: expected a non-empty string, got {value!r}")
        return value

    def number(self, key: str, positive: bool = True, default: float | None = None) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ScenarioError(f"{self.path}.{key}: expected a number, got {value!r}")
        if value < 0 or (positive and value == 0) or value == float("inf"):
            kind = "positive" if positive else "non-negative"
            raise ScenarioError(f"{self.path}.{key}: must be {kind} and finite, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int | None = None) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScenarioError(f"{self.path}.{key}: expected a positive integer, got {value!r}")
        return value

    def mapping(self, key: str) -> dict:
        value = self.data.get(key)
        if not isinstance(value, dict) or not value:
            raise ScenarioError(f"{self.path}.{key}: expected a non-empty object")
        return value

    def sequence(self, key: str, default: Any = None) -> list:
        value = self.data.get(key, default)
        if not isinstance(value, list):
            raise ScenarioError(f"{self.path}.{key}: expected a list, got {type(value).__name__}")
        return value


def _site(data: Any, path: str) -> Site:
    fields = _Fields(data, path, ("bandwidth_gbps", "latency_ms"))
    return Site(fields.number("bandwidth_gbps"), fields.number("latency_ms", positive=False))


def _device(data: Any, path: str, sites: Mapping[str, Site]) -> Device:
    fields = _Fields(data, path, ("id", "site", "tflops", "memory_gb"), ("uplink_gbps",))
    site = fields.string("site")
    if site not in sites:
        raise ScenarioError(f"{path}.site: unknown site {site!r}; add it to \"sites\"")
    uplink = fields.number("uplink_gbps") if "uplink_gbps" in data else None
    return Device(fields.string("id"), site, fields.number("tflops"), fields.number("memory_gb"), uplink)


def _device_dict(device: Device) -> dict:
    data = {"id": device.id, "site": device.site, "tflops": device.tflops, "memory_gb": device.memory_gb}
    if device.uplink_gbps is not None:
        data["uplink_gbps"] = device.uplink_gbps
    return data


def _link(data: Any, path: str, sites: Mapping[str, Site]) -> Link:
    fields = _Fields(data, path, ("between", "bandwidth_gbps", "latency_ms"))
    pair = fields.get("between")
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
        raise ScenarioError(f"{path}.between: expected two site names, got {pair!r}")
    for site in pair:
        if site not in sites:
            raise ScenarioError(f"{path}.between: unknown site {site!r}; add it to \"sites\"")
    if pair[0] == pair[1]:
        raise ScenarioError(f"{path}.between: a link joins two different sites (the site's own "
                            f"link is sites.{pair[0]})")
    return Link((pair[0], pair[1]), fields.number("bandwidth_gbps"), fields.number("latency_ms", positive=False))


def _model(data: Any) -> ModelSpec:
    fields = _Fields(data, "model", ("layers", "d_model", "heads", "seq_len", "vocab"))
    model = ModelSpec(*(fields.integer(k) for k in ("layers", "d_model", "heads", "seq_len", "vocab")))
    if model.d_model % model.heads:
        raise ScenarioError(f"model.heads: {model.heads} does not divide d_model {model.d_model}")
    return model


def _batch(data: Any) -> Batch:
    fields = _Fields(data, "batch", ("global_sequences",), ("micro_sequences",))
    batch = Batch(fields.integer("global_sequences"), fields.integer("micro_sequences", 1))
    if batch.global_sequences % batch.micro_sequences:
        raise ScenarioError(f"batch.micro_sequences: {batch.micro_sequences} does not divide "
                            f"global_sequences {batch.global_sequences}")
    return batch


def _compression(data: Any) -> Compression:
    keys = ("forward_bits", "backward_bits", "gradient_bits")
    fields = _Fields(data, "compression", (), keys)
    values = [fields.integer(k, 16) for k in keys]
    for key, value in zip(keys, values):
        if value not in _BITS:
            raise ScenarioError(f"compression.{key}: {value} is not a supported width; use 1-8, 16 or 32")
    return Compression(*values)


def _parallelism(data: Any, model: ModelSpec, batch: Batch, devices: int) -> Parallelism | None:
    if data is None:
        return None
    fields = _Fields(data, "parallelism", ("stages", "replicas"))
    result = Parallelism(fields.integer("stages"), fields.integer("replicas"))
    if result.stages > model.layers:
        raise ScenarioError(f"parallelism.stages: {model.layers} layers cannot be split into "
                            f"{result.stages} stages; use at most {model.layers}")
    if result.stages * result.replicas > devices:
        raise ScenarioError(f"parallelism: {result.stages} x {result.replicas} needs "
                            f"{result.stages * result.replicas} devices, the scenario has {devices}")
    if result.replicas * batch.micro_sequences > batch.global_sequences:
        raise ScenarioError(f"parallelism.replicas: {result.replicas} pipelines need at least one "
                            f"micro-batch each; global_sequences is {batch.global_sequences}")
    return result


def _build_network(scenario: Scenario) -> Network:
    names = list(scenario.sites)
    position = {name: i for i, name in enumerate(names)}
    pairs = {}
    for i, link in enumerate(scenario.links):
        key = frozenset(link.between)
        if key in pairs:
            raise ScenarioError(f"links[{i}]: a second link between {link.between[0]!r} and {link.between[1]!r}")
        pairs[key] = link
    used = sorted({d.site for d in scenario.devices}, key=position.__getitem__)
    for a_index, a in enumerate(used):
        for b in used[a_index + 1:]:
            if frozenset((a, b)) not in pairs:
                raise ScenarioError(f"links: no link between sites {a!r} and {b!r}; add "
                                    f"{{\"between\": [\"{a}\", \"{b}\"], \"bandwidth_gbps\": ..., \"latency_ms\": ...}}")
    return Network.build(names, scenario.sites, pairs, scenario.devices)
