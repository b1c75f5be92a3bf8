"""Starting, resuming and finishing a run: everything between the command line and the model.

`start` validates the scenario, loads the data and the model, creates the run directory and its
database, and drives the model step by step. `resume` reopens a run directory, rebuilds the same
objects from the scenario text stored in the database, restores prices, agent memories and the
last saved adapters, and goes on from the last committed step. A run that fails is marked
`failed` with its one-line error; an interrupted one `interrupted`; committed steps stay.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from agents.llm import LLM
from agents.lora_kernel import decoding_path
from agents.remote import DETERMINISM, RemoteLLM
from analysis.rundb import resolve_run_db
from core.errors import DataFileError, UserError
from core.provenance import package_versions_json
from core.seeding import child_seed
from core.store import RUN_DB_FILE as DATABASE
from core.store import RunStore
from market.data import MarketData
from simulation.aed_meter import AEDMeter
from simulation.console import LiveConsole, PlainConsole
from simulation.data_checks import check_against_data
from simulation.model import MarketModel, agent_specs
from simulation.scenario import Scenario, load_scenario, parse_scenario
from simulation.warnings_log import captured_warnings
from training.apo import PromptOptimizer
from training.phase import Trainer


@dataclass
class RunResult:
    run_dir: Path
    database: Path
    status: str
    steps: int
    seconds: float


def quiet_libraries() -> None:
    """Library progress bars and advice would drown the console; errors still surface."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_data(scenario: Scenario, scenario_file: str) -> tuple[MarketData, list[pd.Timestamp]]:
    """The scenario's dataset, windowed to its dates, and the run's decision dates (every
    `data.every`-th trading date)."""
    config = scenario.data
    data = source_data(scenario, scenario_file).window(config.start, config.end)
    dates = data.dates
    check_against_data(scenario, scenario_file, data.categories, data.assets, len(dates))
    return data, dates[:: config.every]


def source_data(scenario: Scenario, scenario_file: str) -> MarketData:
    """The scenario's whole dataset, before `data.start` / `data.end` window it."""
    config = scenario.data
    if config.source == "synthetic":
        from market.sources.synthetic import generate_synthetic

        synthetic = config.synthetic
        data = generate_synthetic(n_assets=synthetic.n_assets, n_days=synthetic.n_days, start_date=config.start or "2020-01-01",
                                  signal=synthetic.signal, factors_per_category=synthetic.factors_per_category,
                                  daily_volatility=synthetic.daily_volatility, seed=child_seed(scenario.run.seed, "data"))
    elif config.source == "sp500":
        from market.sources.sp500 import load_sp500

        data = load_sp500()  # the whole sample; `load_data` windows it
    else:
        from market.sources.user_file import load_user_file

        path = Path(config.path).expanduser()
        if not path.is_absolute() and not path.exists():
            path = Path(scenario_file).parent / path  # relative to the scenario file
        if not path.exists():
            raise DataFileError(str(path), "data.path", "file not found", f"fix data.path in {scenario_file} (relative paths are read from the current directory or the scenario's folder)")
        data = load_user_file(path)
    return data


def new_run_dir(output_dir: str, name: str) -> Path:
    """<output_dir>/<name>, or <name>-2, -3, ... if that exists: a run never overwrites another."""
    base = Path(output_dir).expanduser()
    candidate, suffix = base / name, 2
    while candidate.exists():
        candidate, suffix = base / f"{name}-{suffix}", suffix + 1
    return candidate


def build_trainer(scenario: Scenario, llm: LLM | RemoteLLM, run_dir: Path, agent_ids: list[int], assets: list[str] | None = None) -> Trainer | PromptOptimizer | None:
    if not scenario.training.enabled:
        return None
    model, market = scenario.model, scenario.market
    if scenario.training.method == "apo":
        return PromptOptimizer(llm, build_optimizer(scenario, llm), scenario.training, agent_ids, assets or [], reward=market.reward,
                               risk_aversion=market.risk_aversion, belief_tokens=model.belief_tokens, max_prompt_tokens=model.max_prompt_tokens,
                               batch_size=model.batch_size)
    llm = llm.local if isinstance(llm, RemoteLLM) else llm  # a server with runtime LoRA: train the local copy
    trainer = Trainer(llm, scenario.training, run_dir / "adapters", agent_ids, reward=market.reward, risk_aversion=market.risk_aversion,
                      belief_tokens=model.belief_tokens, max_prompt_tokens=model.max_prompt_tokens, batch_size=model.batch_size)
    trainer.attach()
    return trainer


def build_optimizer(scenario: Scenario, llm: LLM | RemoteLLM) -> LLM | RemoteLLM:
    """APO's optimizer model: the agents' own (default), another local model, or a server."""
    apo, config = scenario.training.apo, scenario.model
    if apo.optimizer_base_url is not None:
        return RemoteLLM(apo.optimizer_base_url, apo.optimizer_model, api_key_env=apo.optimizer_api_key_env, constraint="none",
                         concurrency=config.concurrency, timeout_s=config.timeout_s, max_retries=config.max_retries)
    if apo.optimizer == "self":
        return llm
    return LLM.load(apo.optimizer, None, config.device, config.dtype)


def build_aed_meter(scenario: Scenario, dates: list[pd.Timestamp], store: RunStore) -> AEDMeter | None:
    if not scenario.aed.enabled:
        return None
    return AEDMeter(scenario.aed, dates[: scenario.run.steps], store)


def _console(scenario: Scenario, data: MarketData, run_dir: Path, llm: LLM, plain: bool):
    header = {"run": str(run_dir), "model": llm.source.model_id, "device": str(llm.device), "dtype": str(llm.dtype).removeprefix("torch."),
              "agents": str(scenario.agents.n_agents), "data": data.source}
    if plain or not sys.stdout.isatty():
        return PlainConsole(scenario.run.steps, header)
    return LiveConsole(scenario.run.steps, header)


def _load_llm(scenario: Scenario, scenario_file: str | None = None) -> LLM | RemoteLLM:
    import torch

    config = scenario.model
    if config.threads:
        torch.set_num_threads(config.threads)
    local = LLM.load(config.path, config.gguf_file, config.device, config.dtype) if config.backend == "transformers" or config.lora_updates else None
    if config.backend == "openai":
        return RemoteLLM(config.base_url, config.model, api_key_env=config.api_key_env, constraint=config.constraint, concurrency=config.concurrency,
                         timeout_s=config.timeout_s, max_retries=config.max_retries, scenario_file=scenario_file, local=local)
    return local


def backend_json(scenario: Scenario, llm: LLM | RemoteLLM) -> str:
    """What the run records of its model's backend (never the API key, only its variable's name),
    and for in-process LoRA training what computes a decoding step's LoRA term ("kernel" or "bmm",
    which round a seeded run's beliefs differently: agents.lora_kernel)."""
    config = scenario.model
    local = llm if isinstance(llm, LLM) else llm.local
    lora = {"lora_decoding": decoding_path(local.device)} if local is not None and scenario.training.trains_lora else {}
    if config.backend != "openai":
        return json.dumps({"backend": config.backend, **lora})
    return json.dumps({"backend": "openai", "base_url": config.base_url, "model": config.model, "api_key_env": config.api_key_env,
                       "constraint": config.constraint, "determinism": DETERMINISM, **lora})


def start(scenario_path: str, *, plain: bool = False, output_dir: str | None = None, overrides: list[str] | None = None) -> RunResult:
    """Start a run of `scenario_path` with `KEY=VALUE` overrides (validated with the file); the run
    records the overrides and a resume applies them again."""
    overrides = list(overrides or []) + ([f"run.output_dir={json.dumps(output_dir)}"] if output_dir is not None else [])
    scenario = load_scenario(scenario_path, overrides)
    data, dates = load_data(scenario, scenario_path)
    llm = _load_llm(scenario, scenario_path)
    run_dir = new_run_dir(scenario.run.output_dir, scenario.run.name)
    # Build the database beside its final name and rename it into place: a run directory that
    # exists always holds a run row, whenever the process is killed.
    starting = run_dir.with_name(run_dir.name + ".starting")
    starting.mkdir(parents=True, exist_ok=True)
    store = RunStore(starting / DATABASE)
    store.start_run(run_id=f"{scenario.run.name}-{uuid.uuid4().hex[:8]}", name=scenario.run.name, scenario_path=str(Path(scenario_path).resolve()),
                    scenario_toml=Path(scenario_path).read_text(encoding="utf-8"), overrides=json.dumps(overrides), master_seed=scenario.run.seed,
                    model_id=llm.source.model_id, model_sha256=llm.sha256, device=str(llm.device), dtype=str(llm.dtype).removeprefix("torch."),
                    package_versions=package_versions_json(), steps_planned=scenario.run.steps, backend=backend_json(scenario, llm))
    store.close()
    starting.rename(run_dir)
    store = RunStore(run_dir / DATABASE)
    return _drive(scenario, data, dates, store, llm, run_dir, plain, resumed=False)


def run_scenario(info: dict) -> Scenario:
    """A run's scenario as it ran: the stored text with the stored `--set` overrides."""
    return parse_scenario(info["scenario_toml"], info["scenario_path"], json.loads(info.get("overrides") or "[]"))


def resume(run_dir: str | Path, *, plain: bool = False) -> RunResult:
    database = resolve_run_db(run_dir)
    run_dir = database.parent
    store = RunStore(database)
    info = store.run_info()
    if not info:
        raise UserError(str(database), "run", "the database has no run row (the run never started)", "start it again with: python -m simulation run SCENARIO")
    if info["status"] == "completed":
        raise UserError(str(database), "run.status", "this run is already completed", "start a new run instead of resuming")
    scenario = run_scenario(info)
    data, dates = load_data(scenario, info["scenario_path"])
    llm = _load_llm(scenario, info["scenario_path"])
    if llm.sha256 != info["model_sha256"]:
        raise UserError(str(database), "run.model_sha256", "the model weights differ from the ones this run started with", "point model.path at the original weights")
    return _drive(scenario, data, dates, store, llm, run_dir, plain, resumed=True)


def _drive(scenario: Scenario, data: MarketData, dates, store: RunStore, llm: LLM, run_dir: Path, plain: bool, resumed: bool) -> RunResult:
    started = time.perf_counter()
    try:
        specs = agent_specs(scenario)
        console = _console(scenario, data, run_dir, llm, plain)
        model = MarketModel(scenario, data, dates, store, llm, trainer=build_trainer(scenario, llm, run_dir, [spec.agent_id for spec in specs],
                                                                                  scenario.data.assets or data.assets),
                            aed_meter=build_aed_meter(scenario, dates, store), observer=console)
        if store.scalar("SELECT count(*) FROM agents") == 0:
            # Not `if not resumed`: a run killed after its directory appeared but before this
            # line has a run row and no agents yet, and its resume must write them.
            store.insert("agents", [agent_row(spec) for spec in specs])
        store.con.execute("UPDATE run SET status = 'running', error = NULL")
        with captured_warnings() as warned, console:
            console.watch_warnings(warned)
            if resumed:
                model.restore_from_store()
                console.start_at(model.next_step)
            warned.step = model.next_step
            model.catch_up_learning()
            warned.flush(store)
            while model.next_step < scenario.run.steps:
                warned.step = model.next_step
                model.step()
                warned.flush(store)
    except KeyboardInterrupt:
        store.mark("interrupted", "interrupted by the user", time.perf_counter() - started)
        raise
    except BaseException as error:
        message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        store.mark("failed", message, time.perf_counter() - started)
        raise
    else:
        store.mark("completed", None, time.perf_counter() - started)
    finally:
        store.close()  # mark() has run by now, so the status is on disk
    return RunResult(run_dir, run_dir / DATABASE, "completed", scenario.run.steps, time.perf_counter() - started)


def agent_row(spec) -> dict:
    return {"agent_id": spec.agent_id, "group_name": spec.group, "visible_categories": list(spec.visible_categories),
            "optimism": spec.persona.optimism, "rationality": spec.persona.rationality, "risk_preference": spec.persona.risk_preference,
            "temperature": spec.temperature, "memory_length": spec.memory_length, "seed": spec.seed}


EXAMPLE_QUERIES = """\
-- price path against the data's fundamental path
SELECT step, date, price, fundamental_price, net_demand FROM market ORDER BY step;
-- reward and hit rate by group
SELECT a.group_name, round(sum(d.reward), 4) AS reward, round(avg((sign(d.decision_depth) = sign(d.realised_return))::INT), 3) AS hit_rate
FROM decisions d JOIN agents a USING (agent_id) GROUP BY 1 ORDER BY 2 DESC;
-- did training help? each group's corr of its expected decision with the next return, per adapter version
SELECT group_name, adapter_version, count(*) AS n, round(corr(expected_decision, realised_return), 3) AS corr_expected,
       round(corr(decision_depth, realised_return), 3) AS corr_sampled FROM decisions GROUP BY ALL ORDER BY ALL;
-- AED after every training phase
SELECT phase, step, round(aed_decision, 4) AS aed_decision, round(aed_belief, 4) AS aed_belief FROM aed ORDER BY phase;
-- what the agents believed on the last step
SELECT agent_id, decision_depth, belief FROM decisions WHERE step = (SELECT max(step) FROM decisions) ORDER BY agent_id;"""
