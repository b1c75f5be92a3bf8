"""A sweep's plan: seeds × a grid of scenario settings, each combination one run, all validated first.

`--seeds 0-5` or `0,2,4` or `0-2,7`; `--set KEY=V1,V2` sweeps a key over values (commas inside
brackets, braces or quotes do not split: `--set 'agents.groups[0].categories=["a","b"]'` is one
value), `--set KEY=V` sets one value for every run. Every combination is validated by the scenario
schema, exactly as if its values were written in the file, before any run starts.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.overrides import parse_value, split_override
from simulation.scenario import Scenario, load_scenario

RESERVED = {"run.seed": "use --seeds", "run.name": "use --name (each run is named for its settings)",
            "run.output_dir": "use --output-dir (the runs go under the sweep's folder)"}


@dataclass(frozen=True)
class PlannedRun:
    key: str  # the run's name and folder: unique in the sweep, readable
    seed: int
    settings: dict[str, str]  # swept KEY -> its value as written (TOML text)
    fixed: tuple[str, ...]  # KEY=VALUE set for every run

    @property
    def overrides(self) -> list[str]:
        return list(self.fixed) + [f"{key}={value}" for key, value in self.settings.items()] + [f"run.seed={self.seed}"]

    def setting_values(self) -> dict:
        """The swept settings as values (TOML read), with the seed."""
        return {"seed": self.seed, **{key: parse_value(value) for key, value in self.settings.items()}}


def parse_seeds(text: str) -> list[int]:
    """'0-5' -> [0..5]; '0,2,4'; '0-2,7'; each seed once, in the order given."""
    seeds: list[int] = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise UserError(None, "--seeds", f"cannot read {part!r}", "write seeds like 0-5, 0,2,4 or 0-2,7 (non-negative, ranges ascending)")
        first, last = int(match[1]), int(match[2] or match[1])
        seeds.extend(seed for seed in range(first, last + 1) if seed not in seeds)
    if not seeds:
        raise UserError(None, "--seeds", "no seed given", "write seeds like 0-5")
    return seeds


def split_values(text: str) -> list[str]:
    """Split at commas that are not inside brackets, braces or quotes."""
    values, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += char
    values.append(current.strip())
    return values


def parse_grid(pairs: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """`--set` pairs -> (swept KEY -> values, fixed KEY=VALUE pairs)."""
    grid: dict[str, list[str]] = {}
    fixed: list[str] = []
    for pair in pairs:
        key, value = split_override(pair, "--set")
        if key in RESERVED:
            raise UserError(None, f"--set {key}", "a sweep sets this key itself", RESERVED[key])
        if key in grid or any(item.partition("=")[0] == key for item in fixed):
            raise UserError(None, f"--set {key}", "the key is given twice", "give each key once, with all its values: KEY=V1,V2")
        values = split_values(value)
        if any(not item for item in values):
            raise UserError(None, f"--set {key}", f"an empty value in {value!r}", "write the values like KEY=0.1,0.2")
        if len(values) == 1:
            fixed.append(f"{key}={values[0]}")
        else:
            grid[key] = values
    return grid, fixed


def _key_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def plan_runs(seeds: list[int], grid: dict[str, list[str]], fixed: list[str]) -> list[PlannedRun]:
    """Every combination of the grid's values, for every seed: settings first, then seeds."""
    keys = list(grid)
    runs = []
    for index, (values, seed) in enumerate(itertools.product(itertools.product(*(grid[key] for key in keys)), seeds)):
        settings = dict(zip(keys, values, strict=True))
        name = "_".join([f"{index:03d}", f"seed{seed}"] + [f"{key.rsplit('.', 1)[-1]}-{_key_part(value)}" for key, value in settings.items()])
        runs.append(PlannedRun(key=name[:120], seed=seed, settings=settings, fixed=tuple(fixed)))
    return runs


def validate_runs(scenario_path: str | Path, runs: list[PlannedRun]) -> Scenario:
    """Validate every run's scenario (schema and data); one `ScenarioError` line on the first bad one.
    Returns the first run's scenario."""
    from agents.llm import resolve_source
    from simulation.run import load_data

    checked: set[str] = set()
    first = None
    for run in runs:
        scenario = load_scenario(scenario_path, run.overrides)
        data_key = json.dumps(scenario.data.model_dump(), sort_keys=True, default=str)
        if scenario.data.source == "synthetic":
            data_key += f" seed {scenario.run.seed}"  # the synthetic market is drawn from the master seed
        if data_key not in checked:  # the data checks read the dataset: once per distinct data section
            load_data(scenario, str(scenario_path))
            checked.add(data_key)
        model_key = f"model {scenario.model.path} {scenario.model.gguf_file}"
        if model_key not in checked:
            resolve_source(scenario.model.path, scenario.model.gguf_file)
            checked.add(model_key)
        first = first or scenario
    return first
