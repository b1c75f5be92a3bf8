"""Out-of-sample evaluation: a run's trained agents, frozen, on dates the run never traded, beside baselines.

`evaluate(run_dir, ...)` replays the run's agents with their adapters from phase K (default: the
last) on evaluation dates: later dates of the same data (default: every date after the run's
last), a `start`..`end` window, or another scenario's data; with `every` = K, only every K-th
trading date of the window is a decision date (each still paid by its next day's return, the
price following the data in between), so that years fit a CPU. Nothing trains, memory starts empty,
and market impact is 0 unless chosen, so the price path is the data's own and every strategy is
scored on the same returns. Each evaluation seed is one pass over the dates; the agents decide
as in a run (the same Mesa model, prompts and decision slot), and every decision is stored.

Strategies, on exactly the evaluation dates:
- `trained`: the agents with their phase-K adapters, or, after APO (`training.method = "apo"`),
  with the strategy prompts they had adopted by phase K;
- `untrained`: the same agents with no adapter (the base model) and the initial strategy prompt:
  the same prompts otherwise, and the same seeds;
- `buy_and_hold`: +10 every day;
- `momentum`: the sign of the past 20-day return, times 10 (0 until 20 days of history exist);
- `factor`: per agent, the sign of the first factor it reads (as its prompt shows it), times 10.

Metrics per agent, per group and per strategy (`analysis/evaluation.py`): mean pay, hit rate,
corr(decision, next return) and corr(E[d], r), and an annualised Sharpe ratio of the position
with its standard error and the number of days, each with a 95 % block-bootstrap interval.

**Look-ahead guard.** Dates the run traded on are refused unless `allow_overlap`; then every
figure is marked `in_sample`. Everything goes to `<run>/evaluation.duckdb` (replaced if it exists).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from agents.llm import LLM
from analysis.evaluation import (
    CI_METHOD,
    EVALUATION_DB,
    evaluate_strategy,
    factor_decision,
    momentum_decision,
)
from analysis.rundb import resolve_run_db
from core.errors import UserError
from core.provenance import provenance
from core.seeding import child_seed
from core.store import RunStore
from market.data import MarketData
from simulation.data_checks import check_against_data
from simulation.model import MarketModel, Silent
from simulation.run import run_scenario, source_data
from simulation.scenario import Scenario, load_scenario
from training.apo import adopted_strategies
from training.belief_quality import reads_as_market_text
from training.phase import lora_spec

PROGRESS_EVERY = 25  # days between progress lines
SCHEMA = """
CREATE TABLE evaluation (run_dir VARCHAR, phase INTEGER, first_date DATE, last_date DATE, days INTEGER, every INTEGER, seeds INTEGER,
    impact DOUBLE, data VARCHAR, in_sample BOOLEAN, ci_method VARCHAR, provenance VARCHAR, seconds DOUBLE);
CREATE TABLE eval_decisions (strategy VARCHAR, seed INTEGER, step INTEGER, date DATE, agent_id INTEGER, group_name VARCHAR,
    asset VARCHAR, belief VARCHAR, decision_depth DOUBLE, expected_decision DOUBLE, realised_return DOUBLE, reward DOUBLE,
    adapter_version INTEGER, prompt_version INTEGER, prompt VARCHAR);
CREATE TABLE eval_metrics (strategy VARCHAR, level VARCHAR, agent_id INTEGER, group_name VARCHAR, metric VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, in_sample BOOLEAN);
"""


@dataclass(frozen=True)
class Evaluation:
    database: Path
    days: int
    in_sample: bool
    seconds: float


def evaluate(run_dir: str | Path, *, phase: int | None = None, start: str | None = None, end: str | None = None, data_scenario: str | None = None,
             seeds: int = 1, every: int = 1, impact: float = 0.0, allow_overlap: bool = False, progress: Callable[[str], None] | None = None) -> Evaluation:
    """`progress`, if given, is called with a line now and then (the command line prints them)."""
    started = time.perf_counter()
    if every < 1:
        raise UserError(None, "--every", f"must be at least 1, got {every}", "give --every 1 (every trading date) or more")
    database = resolve_run_db(run_dir)
    run_dir = database.parent
    store = RunStore(database, read_only=True)
    info = store.run_info()
    scenario = run_scenario(info)
    traded = [pd.Timestamp(date) for date in store.query("SELECT DISTINCT date FROM decisions ORDER BY date")["date"]]
    apo = scenario.training.method == "apo"
    phases = store.query(f"SELECT DISTINCT phase FROM {'prompts' if apo else 'training'} WHERE phase > 0 ORDER BY phase")["phase"].tolist()
    prompt_rows = store.query("SELECT * FROM prompts").to_dict("records") if apo else []
    store.close()
    if scenario.model.backend != "transformers":
        raise UserError(str(database), "model.backend", "evaluate replays in-process models only; this run asked a remote server",
                        "evaluate a run of a model.backend = \"transformers\" scenario")
    phase = (int(phases[-1]) if phases else 0) if phase is None else phase
    if phase and phase not in phases:
        raise UserError(str(database), "--phase", f"the run has no training phase {phase} (it has {phases or 'none'})", "pick one of its phases, or 0 for the untrained agents")
    source = scenario if data_scenario is None else load_scenario(data_scenario)
    data = source_data(source, data_scenario or info["scenario_path"])
    dates = _evaluation_dates(data, traded, start, end, same_data=data_scenario is None)[:-1][::every]
    overlap = sorted(set(dates) & set(traded))
    if overlap and not allow_overlap:
        raise UserError(str(database), "--start/--end", f"{len(overlap)} evaluation dates ({overlap[0].date()} .. {overlap[-1].date()}) are dates the run traded on",
                        f"evaluate after {traded[-1].date()}, or pass --allow-overlap (every figure is then marked in-sample)")
    in_sample = bool(overlap)
    evaluated = _evaluation_scenario(scenario, source, len(dates), impact)
    check_against_data(evaluated, data_scenario or info["scenario_path"], data.categories, data.assets, len(dates) + 1)
    llm = load_run_model(scenario, info, database)
    decisions = []
    for strategy in ("trained", "untrained"):
        trained = strategy == "trained" and bool(phase)
        if trained and not apo:
            load_adapters(llm, scenario, run_dir / "adapters" / f"phase_{phase}")
        prompts = adopted_strategies(prompt_rows, phase) if trained and apo else None
        for seed in range(seeds):
            decisions.append(_play(evaluated, data, dates, llm, seed, strategy, phase if trained and not apo else 0, prompts, progress))
        llm.detach_adapters()
    decisions = pd.concat(decisions, ignore_index=True)
    baselines = _baselines(data, dates, evaluated)
    every_decision = pd.concat([decisions, baselines], ignore_index=True)
    metrics = _metrics(every_decision, in_sample, child_seed(scenario.run.seed, "evaluation bootstrap"))
    out = run_dir / EVALUATION_DB
    out.unlink(missing_ok=True)
    import duckdb

    con = duckdb.connect(str(out))
    con.execute(SCHEMA)
    con.execute("INSERT INTO evaluation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [str(run_dir), phase, dates[0].date(), dates[-1].date(), len(dates), every, seeds, impact, data.source, in_sample, CI_METHOD,
                 json.dumps(provenance()), time.perf_counter() - started])
    for table, frame in (("eval_decisions", every_decision), ("eval_metrics", metrics)):
        con.register("incoming", frame)
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
        con.unregister("incoming")
    con.close()
    return Evaluation(out, len(dates), in_sample, time.perf_counter() - started)


def _evaluation_dates(data: MarketData, traded: list[pd.Timestamp], start: str | None, end: str | None, *, same_data: bool) -> list[pd.Timestamp]:
    """The window's trading dates; the last one only pays the decision before it."""
    dates = data.dates
    if start is None and same_data:
        first = traded[-1] + pd.Timedelta(days=1)  # the day after the run's last traded date
    else:
        first = pd.Timestamp(start) if start is not None else dates[0]
    last = pd.Timestamp(end) if end is not None else dates[-1]
    window = [date for date in dates if first <= date <= last]
    if len(window) < 3:
        raise UserError(str(data.source), "--start/--end", f"only {len(window)} trading dates from {first.date()} to {last.date()}", "give a window of at least 3 trading dates (a later --end, or more data)")
    return window


def _evaluation_scenario(scenario: Scenario, source: Scenario, steps: int, impact: float) -> Scenario:
    """The run's agents and model on the evaluation data: no training, no AED, no events."""
    return scenario.model_copy(update={
        "run": scenario.run.model_copy(update={"steps": steps}),
        "data": source.data.model_copy(update={"every": 1}),  # the decision dates are given
        "market": scenario.market.model_copy(update={"impact": impact}),
        "training": scenario.training.model_copy(update={"enabled": False}),
        "aed": scenario.aed.model_copy(update={"enabled": False}),
        "events": [],
    })


def load_run_model(scenario: Scenario, info: dict, database: Path) -> LLM:
    """The in-process model a run used, refused in one line if its weights are not the same."""
    config = scenario.model
    llm = LLM.load(config.path, config.gguf_file, config.device, config.dtype)
    if llm.sha256 != info["model_sha256"]:
        raise UserError(str(database), "run.model_sha256", "the model weights differ from the ones this run used", "point model.path at the original weights")
    return llm


def load_adapters(llm: LLM, scenario: Scenario, folder: Path) -> None:
    """Every agent's adapter as a run saved it in `folder` (`<run>/adapters/phase_K`)."""
    adapters = llm.attach_adapters(scenario.agents.n_agents, lora_spec(scenario.training, llm.layer_count))
    for agent in range(scenario.agents.n_agents):
        adapters.load_agent(agent, folder / f"agent_{agent}")


def _play(scenario: Scenario, data: MarketData, dates: list[pd.Timestamp], llm: LLM, seed: int, strategy: str, version: int,
          prompts: dict[int, tuple[int, str]] | None, progress: Callable[[str], None] | None) -> pd.DataFrame:
    """One pass of the agents over the decision dates, as a run would make it (in a scratch store);
    `prompts`: each agent's adopted strategy prompt (version, text) after APO, None for the initial one."""
    seeded = scenario.model_copy(update={"run": scenario.run.model_copy(update={"seed": child_seed(scenario.run.seed, "evaluate", seed)})})
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "scratch.duckdb")
        model = MarketModel(seeded, data, dates, store, llm, trainer=None, aed_meter=None, observer=Silent(), adapter_version=version)
        if prompts:
            model.apply_prompts(prompts)
        while model.next_step < seeded.run.steps:
            model.step()
            if progress is not None and (model.next_step % PROGRESS_EVERY == 0 or model.next_step == seeded.run.steps):
                progress(f"{strategy} agents, seed {seed}: {model.next_step}/{seeded.run.steps} days")
        frame = store.query("SELECT step, date, agent_id, asset, belief, decision_depth, expected_decision, realised_return, reward, adapter_version, prompt_version, prompt FROM decisions")
        groups = {agent.agent_id: agent.spec.group for agent in model.agents}
        store.close()
    return frame.assign(strategy=strategy, seed=seed, group_name=frame["agent_id"].map(groups))


def _baselines(data: MarketData, dates: list[pd.Timestamp], scenario: Scenario) -> pd.DataFrame:
    """Buy-and-hold, momentum and each agent's own first factor, on exactly the decision dates."""
    import duckdb

    from market.factor_store import FactorStore
    from simulation.model import agent_specs

    closes = data.prices.pivot(index="date", columns="asset", values="close")
    assets = scenario.data.assets or data.assets
    factors = FactorStore(duckdb.connect(), data)
    specs = agent_specs(scenario)
    rows = []
    for step, (date, next_date) in enumerate(zip(dates, data.next_trading_dates(dates), strict=True)):
        for asset in assets:
            realised = float(closes.loc[next_date, asset] / closes.loc[date, asset] - 1.0)
            momentum = momentum_decision(closes.loc[:date, asset])
            base = {"seed": 0, "step": step, "date": date, "asset": asset, "realised_return": realised, "expected_decision": None}
            rows.append({**base, "strategy": "buy_and_hold", "agent_id": None, "group_name": None, "decision_depth": 10.0})
            rows.append({**base, "strategy": "momentum", "agent_id": None, "group_name": None, "decision_depth": momentum})
            for spec in specs:
                first = factors.visible(date, asset, list(spec.visible_categories)).iloc[0]["value"]
                rows.append({**base, "strategy": "factor", "agent_id": spec.agent_id, "group_name": spec.group, "decision_depth": factor_decision(first)})
    frame = pd.DataFrame(rows)
    return frame.assign(reward=frame["decision_depth"] * frame["realised_return"])


def _metrics(decisions: pd.DataFrame, in_sample: bool, seed: int) -> pd.DataFrame:
    """Every metric of every strategy, per agent, per group and for all of its agents; decisions of
    several agents, assets or seeds on one day are averaged per (date, asset) first."""
    rows = []
    decisions = decisions.assign(reads_as_text=[float(reads_as_market_text(belief, prompt)) if isinstance(belief, str) else float("nan")
                                                for belief, prompt in zip(decisions["belief"], decisions["prompt"], strict=True)])

    def add(strategy: str, level: str, agent_id, group_name, frame: pd.DataFrame) -> None:
        daily = frame.groupby(["date", "asset"], sort=True).agg(decision=("decision_depth", "mean"), expected=("expected_decision", "mean"),
                                                                 text=("reads_as_text", "mean"), realised=("realised_return", "first"))
        expected = None if daily["expected"].isna().any() else daily["expected"].to_numpy()
        text = None if daily["text"].isna().any() else daily["text"].to_numpy()
        for metric in evaluate_strategy(daily["decision"].to_numpy(), daily["realised"].to_numpy(), expected, text=text,
                                        seed=child_seed(seed, strategy, level, str(agent_id), str(group_name))):
            rows.append({"strategy": strategy, "level": level, "agent_id": agent_id, "group_name": group_name, "metric": metric.name,
                         "value": metric.value, "ci_low": metric.ci_low, "ci_high": metric.ci_high, "in_sample": in_sample})

    for strategy, frame in decisions.groupby("strategy", sort=False):
        add(strategy, "all", None, None, frame)
        if frame["agent_id"].notna().any():
            for group, rows_of_group in frame.groupby("group_name", sort=True):
                add(strategy, "group", None, group, rows_of_group)
            for agent, rows_of_agent in frame.groupby("agent_id", sort=True):
                add(strategy, "agent", int(agent), rows_of_agent["group_name"].iloc[0], rows_of_agent)
    return pd.DataFrame(rows)
