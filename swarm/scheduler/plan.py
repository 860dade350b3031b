"""Plan: which device holds which stage of which pipeline, and how many layers each stage has.

The JSON is DESIGN.md's plan file: `grid[s][r]` is the device holding stage s of pipeline r,
`layers[s]` the layers of stage s, `predicted` the cost model's breakdown. `cost_model` (which
model predicted it) is an optional extra field. `validate(scenario)` checks a plan against the
scenario it claims to plan, with errors that name the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swarm.scheduler.cost import COST_MODELS
from swarm.scheduler.scenario import Scenario, ScenarioError, load_json

__all__ = ["Plan", "PlanError"]

_PREDICTED = ("iteration_s", "compute_s", "pipeline_s", "data_parallel_s")


class PlanError(ScenarioError):
    """A plan file that is malformed or does not fit its scenario."""


@dataclass(frozen=True)
class Plan:
    """A placement: `grid[s][r]` holds stage s of pipeline r, with `layers[s]` layers.

    Build it with `swarm.scheduler.plan`, `Plan.load` or `Plan.from_dict`; check it against a
    scenario with `validate` before running it (the simulator and `predict` do).
    """

    scenario: str
    grid: tuple[tuple[str, ...], ...]
    layers: tuple[int, ...]
    predicted: dict[str, float] = field(default_factory=dict)
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

    def indices(self, scenario: Scenario) -> np.ndarray:
        """The grid as an (S, R) array of positions in `scenario.devices`."""
        index = scenario.index
        return np.array([[index[d] for d in row] for row in self.grid], dtype=np.int64)

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        """Parse and check the plan JSON's shape (the scenario is checked by `validate`)."""
        if not isinstance(data, dict):
            raise PlanError("plan: expected an object")
        allowed = {"scenario", "stages", "replicas", "grid", "layers", "predicted", "cost_model"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PlanError(f"plan: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        for key in ("scenario", "stages", "replicas", "grid", "layers"):
            if key not in data:
                raise PlanError(f"plan.{key}: required field is missing")
        if not isinstance(data["scenario"], str) or not data["scenario"]:
            raise PlanError(f"plan.scenario: expected the scenario's name, got {data['scenario']!r}")
        for key in ("stages", "replicas"):
            if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 1:
                raise PlanError(f"plan.{key}: expected a positive integer, got {data[key]!r}")
        model = data.get("cost_model")
        if model is not None and model not in COST_MODELS:
            raise PlanError(f"plan.cost_model: unknown model {model!r}; one of {', '.join(COST_MODELS)}")
        grid = data["grid"]
        if not (isinstance(grid, list) and grid and all(isinstance(row, list) and row for row in grid)):
            raise PlanError("plan.grid: expected a non-empty list of non-empty lists of device ids")
        if any(not isinstance(d, str) for row in grid for d in row):
            raise PlanError("plan.grid: every entry must be a device id string")
        if len(grid) != data["stages"]:
            raise PlanError(f"plan.grid: {len(grid)} rows but stages is {data['stages']!r}")
        for s, row in enumerate(grid):
            if len(row) != data["replicas"]:
                raise PlanError(f"plan.grid[{s}]: {len(row)} devices but replicas is {data['replicas']!r}")
        layers = data["layers"]
        if not (isinstance(layers, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in layers)):
            raise PlanError("plan.layers: expected a list of integers")
        if len(layers) != len(grid) or min(layers) < 1:
            raise PlanError(f"plan.layers: need one count >= 1 per stage ({len(grid)}), got {layers}")
        predicted = data.get("predicted", {})
        if not isinstance(predicted, dict) or any(k not in _PREDICTED for k in predicted):
            raise PlanError(f"plan.predicted: expected an object with fields {', '.join(_PREDICTED)}")
        for key, value in predicted.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PlanError(f"plan.predicted.{key}: expected seconds (a number), got {value!r}")
        return cls(data["scenario"], tuple(tuple(row) for row in grid), tuple(layers),
                   {k: float(v) for k, v in predicted.items()}, model)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a plan JSON file; errors name the file and the field."""
        return load_json(path, "plan", cls.from_dict, PlanError)

    def to_dict(self) -> dict:
        """The plan file's JSON object; `from_dict(to_dict())` gives an equal plan."""
        data = {"scenario": self.scenario, "stages": self.stages, "replicas": self.replicas,
                "grid": [list(row) for row in self.grid], "layers": list(self.layers),
                "predicted": dict(self.predicted)}
        if self.cost_model:
            data["cost_model"] = self.cost_model
        return data

    def save(self, path: str | Path) -> None:
        """Write the plan file (JSON) to `path`."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def validate(self, scenario: Scenario) -> "Plan":
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
