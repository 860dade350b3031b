"""Plan: which device holds which stage of which pipeline, and how many layers each stage has.

The plan file is the contract `swarm-sim simulate` and the coordinator read: `grid[s][r]` is the
device holding stage s of pipeline r, `layers[s]` the layers of stage s, `predicted` the cost
model's breakdown, and `stages` / `replicas` repeat the grid's shape so a reader can check it.
`cost_model` (which model predicted it) is an optional extra field. `validate(scenario)` checks a
plan against the scenario it claims to plan, with errors that name the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from swarm.scheduler.cost import COST_MODELS
from swarm.scheduler.scenario import Scenario, ScenarioError
from swarm.scheduler.schema import Count, Name, Record, convert, load_json

__all__ = ["Plan", "PlanError"]

Predicted = Literal["iteration_s", "compute_s", "pipeline_s", "data_parallel_s", "control_s"]
Row = Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]


class PlanError(ScenarioError):
    """A plan file that is malformed or does not fit its scenario."""


class _PlanFile(Record, frozen=True):
    """The plan file's JSON object, checked field by field and for a consistent shape."""

    scenario: Name
    stages: Count
    replicas: Count
    grid: Annotated[tuple[Row, ...], msgspec.Meta(min_length=1)]
    layers: tuple[Count, ...]
    predicted: dict[Predicted, float] = {}
    cost_model: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cost_model is not None and self.cost_model not in COST_MODELS:
            raise PlanError(f"unknown model {self.cost_model!r}; one of {', '.join(COST_MODELS)} - at `$.cost_model`")
        if len(self.grid) != self.stages:
            raise PlanError(f"{len(self.grid)} rows but stages is {self.stages} - at `$.grid`")
        for s, row in enumerate(self.grid):
            if len(row) != self.replicas:
                raise PlanError(f"{len(row)} devices but replicas is {self.replicas} - at `$.grid[{s}]`")
        if len(self.layers) != self.stages:
            raise PlanError(f"need one layer count per stage ({self.stages}), got {list(self.layers)} "
                            f"- at `$.layers`")


class Plan(msgspec.Struct, frozen=True):
    """A placement: `grid[s][r]` holds stage s of pipeline r, with `layers[s]` layers.

    Build it with `swarm.scheduler.plan`, `Plan.load` or `Plan.from_dict`; check it against a
    scenario with `validate` before running it (the simulator and `predict` do).
    """

    scenario: str
    grid: tuple[tuple[str, ...], ...]
    layers: tuple[int, ...]
    predicted: dict[str, float] = {}
    cost_model: str | None = None

    @property
    def stages(self) -> int:
        return len(self.grid)

    @property
    def replicas(self) -> int:
        return len(self.grid[0])

    @property
    def devices(self) -> list[str]:
        """Every device in the plan, stage by stage."""
        return [d for row in self.grid for d in row]

    def stage_of(self) -> dict[str, int]:
        """Device id -> the stage it holds."""
        return {d: s for s, row in enumerate(self.grid) for d in row}

    def indices(self, scenario: Scenario) -> npt.NDArray[np.int64]:
        """The grid as an (S, R) array of positions in `scenario.devices`."""
        index = scenario.index
        return np.array([[index[d] for d in row] for row in self.grid], dtype=np.int64)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """Parse and check the plan JSON's shape (the scenario is checked by `validate`)."""
        file = convert(data, _PlanFile, "plan", PlanError)
        predicted: dict[str, float] = {key: value for key, value in file.predicted.items()}
        return cls(file.scenario, file.grid, file.layers, predicted, file.cost_model)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan JSON file; errors name the file and the field."""
        return load_json(path, "plan", cls.from_dict, PlanError)

    def to_dict(self) -> dict[str, Any]:
        """The plan file's JSON object; `from_dict(to_dict())` gives an equal plan."""
        data: dict[str, Any] = {"scenario": self.scenario, "stages": self.stages, "replicas": self.replicas,
                                "grid": [list(row) for row in self.grid], "layers": list(self.layers),
                                "predicted": dict(self.predicted)}
        if self.cost_model:
            data["cost_model"] = self.cost_model
        return data

    def save(self, path: str | Path) -> None:
        """Write the plan file (JSON) to `path`."""
        Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(self.to_dict()), indent=1) + b"\n")

    def validate(self, scenario: Scenario) -> Plan:
        """Check the plan against `scenario`: its name, known and distinct devices, all layers placed."""
        index = scenario.index
        seen: set[str] = set()
        for s, row in enumerate(self.grid):
            for r, device in enumerate(row):
                if device not in index:
                    raise PlanError(f"plan.grid[{s}][{r}]: unknown device id {device!r} "
                                    f"(not in scenario {scenario.name!r})")
                if device in seen:
                    raise PlanError(f"plan.grid[{s}][{r}]: device {device!r} appears twice")
                seen.add(device)
        batch = scenario.batch
        if self.replicas * batch.micro_sequences > batch.global_sequences:
            raise PlanError(f"plan.replicas: {self.replicas} pipelines need at least one micro-batch "
                            f"each; global_sequences is {batch.global_sequences}")
        if sum(self.layers) != scenario.model.layers:
            raise PlanError(f"plan.layers: sum is {sum(self.layers)}, the model has "
                            f"{scenario.model.layers} layers")
        if self.scenario != scenario.name:
            raise PlanError(f"plan.scenario: the plan is for scenario {self.scenario!r}, not "
                            f"{scenario.name!r}; plan this scenario with `swarm-sim plan`")
        return self
