"""Learning benchmark: do the agents learn a planted signal, out of sample, with beliefs that stay text?

On the synthetic market a signal is planted in one category (`fundamental`: its latent at t has
correlation `signal` with the return from t to t+1; the first fundamental factor reads it with
IC ≈ 0.575 at the default 0.6; every other category is noise). Per seed, two agents share one
persona and differ only in what they may read:

- **treated** reads `fundamental`, so a better policy exists for it;
- **control** reads `sentiment` (noise): training can only fit noise.

Both train for `phases` training phases (each: decide on `states` random train dates, get paid the
market's reward, one `Trainer.run_phase`), then are evaluated on later held-out dates, before
training (the base model) and after, each date as it is and mirrored (every factor and the next
return negated: the generator is symmetric, and a mirrored pair's mean return is exactly 0, so a
merely bullish policy gains nothing). Reported per agent:

- corr(E[d], next return), E[d] the exact expected decision after the agent's own sampled belief,
  and corr(d, next return) of the sampled decision;
- mean reward (`return * depth`) of the sampled decisions;
- the **belief value**: the mean expected reward with the agent's own belief less that with a
  belief it wrote on another held-out date for the same prompt (does the decision read the belief?);
- belief quality: the share of beliefs that read as market text, and the exact per-token KL of
  held-out beliefs to the base model;
- **out of sample against baselines** on the same held-out states and returns: the agent after
  training (`trained`) and before (`untrained`), `buy_and_hold` (+10), `momentum` (the sign of the
  past 20-day return) and `factor` (the sign of the first factor the agent reads), each with mean
  pay, hit rate, corr and an annualised Sharpe of the position d / 10 with its standard error, and
  95 % block-bootstrap intervals (`analysis/evaluation.py`, as `python -m simulation evaluate`),
  per seed and pooled over seeds. On mirrored pairs buy-and-hold earns exactly 0 by construction.

Each seed runs alone, as a Ray task in a fresh process (`core/parallel.py`, the mechanism of
`python -m simulation sweep`), with its own model, adapters and seeded batches, so its figures do
not depend on which other seeds ran, nor on how many ran at once (`--cpus-per-seed`).

    python -m benchmarks.learning --seeds 0 1 2 3 4 5
    python -m benchmarks.learning --seeds 0 1 2 3 4 5 --cpus-per-seed 1   # two seeds at a time on 2 cores
    python -m benchmarks.learning --seeds 3 --set training.beliefs_per_state=2
    python -m benchmarks.learning --quick            # a smoke run, one seed, about a minute
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch
from pydantic import Field

from agents.decoding import split_tokens
from agents.llm import LLM, Completion
from agents.prompts import DEFAULT_STRATEGY, Persona, system_message, user_message
from agents.scoring import score
from analysis.evaluation import evaluate_strategy, factor_decision, momentum_decision
from benchmarks.results_file import RESULTS_DIR, write_result
from core.overrides import override_model
from core.parallel import JobRunner, cpu_count
from core.provenance import provenance
from core.schema import Section
from core.seeding import child_seed
from market.factor_store import FactorStore
from market.payoff import recent_variance, reward
from market.sources.synthetic import generate_synthetic
from training.belief_quality import belief_kl, belief_text_share
from training.config import TrainingConfig
from training.phase import Trainer
from training.samples import sample_from_completion

ASSET = "SYN0"
ARMS = {"treated": ("fundamental",), "control": ("sentiment",)}
STRATEGIES = ("trained", "untrained", "factor", "momentum", "buy_and_hold")
PERSONA = Persona(optimism=0.5, rationality=0.8, risk_preference=0.5)


class Settings(Section):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5], description="Market seeds; each runs alone.")
    model: str = Field("packaged", description="As [model] path: 'packaged' SmolLM2-135M, a local HF folder or a hub id.")
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$", description="As [model] dtype.")
    signal: float = Field(0.6, gt=0.0, lt=1.0, description="corr(fundamental latent at t, return t -> t+1).")
    train_dates: int = Field(240, ge=8, description="Dates the phases draw their states from.")
    heldout_dates: int = Field(48, ge=4, description="Later dates evaluated, each also mirrored.")
    phases: int = Field(3, ge=1, description="Training phases.")
    states: int = Field(100, ge=2, description="Train dates each agent decides on per phase; a phase learns from every state decided so far.")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="The agents' sampling temperature.")
    belief_tokens: int = Field(16, ge=4, description="Most belief tokens.")
    batch_size: int = Field(64, ge=1, description="Rows per forward pass.")
    kl_examples: int = Field(8, ge=1, description="Held-out beliefs per agent scored for exact belief KL.")
    reward: str = Field("linear", pattern="^(linear|risk_adjusted)$", description="The market's payoff rule.")
    risk_aversion: float = Field(20.0, ge=0.0, description="lambda of the risk-adjusted payoff.")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(every=1, max_samples=0, beliefs_per_state=1, epochs=4), description="The trainer's settings.")


QUICK = {"seeds": [0], "train_dates": 24, "heldout_dates": 8, "phases": 1, "states": 12, "kl_examples": 2}


class Market:
    """One synthetic market and the prompts the simulation would write on it (no memory, no news)."""

    def __init__(self, llm: LLM, seed: int, settings: Settings):
        self.llm, self.asset = llm, ASSET
        n_days = settings.train_dates + settings.heldout_dates + 2
        self.data = generate_synthetic(n_assets=1, n_days=n_days, start_date="2020-01-01", signal={"fundamental": settings.signal}, factors_per_category=2, seed=seed)
        self.store = FactorStore(duckdb.connect(), self.data)
        prices = self.data.prices[self.data.prices["asset"] == ASSET].set_index("date")
        self.closes = prices["close"]
        self.variance = recent_variance(prices["return"])
        self.dates = list(self.closes.index[:-1])  # every date with a next return
        self.train_dates = self.dates[: settings.train_dates]
        self.heldout = [(date, mirrored) for date in self.dates[settings.train_dates: settings.train_dates + settings.heldout_dates] for mirrored in (False, True)]

    def next_return(self, date: pd.Timestamp, mirrored: bool = False) -> float:
        position = self.closes.index.get_loc(date)
        value = float(self.closes.iloc[position + 1] / self.closes.iloc[position] - 1.0)
        return -value if mirrored else value

    def momentum(self, date: pd.Timestamp, mirrored: bool = False) -> float:
        """The momentum baseline at `date` (a mirror negates the history too)."""
        decision = momentum_decision(self.closes.loc[:date])
        return -decision if mirrored else decision

    def first_factor(self, date: pd.Timestamp, categories: tuple[str, ...], mirrored: bool = False) -> float:
        """The factor baseline: the first factor the agent reads, as its prompt shows it."""
        decision = factor_decision(float(self.store.visible(date, ASSET, list(categories)).iloc[0]["value"]))
        return -decision if mirrored else decision

    def prompt(self, date: pd.Timestamp, categories: tuple[str, ...], mirrored: bool = False, strategy: str = DEFAULT_STRATEGY) -> str:
        factors = self.store.visible(date, ASSET, list(categories))
        if mirrored:
            factors["value"] = -factors["value"]
        user = user_message(asset=ASSET, price=float(self.closes.loc[date]), factors=factors, news=[], memory=[], strategy=strategy)
        return self.llm.chat_prompt(system_message(PERSONA), user)


def run_seed(settings: Settings, seed: int) -> list[dict]:
    """Train and evaluate one seed's treated and control agents; one record per agent."""
    started = time.perf_counter()
    llm = LLM.load(settings.model, dtype=settings.dtype)
    market = Market(llm, seed, settings)
    train_dates, heldout = market.train_dates, market.heldout
    arms = list(ARMS.items())
    with tempfile.TemporaryDirectory() as adapter_dir:
        trainer = Trainer(llm, settings.training, Path(adapter_dir), list(range(len(arms))), reward=settings.reward, risk_aversion=settings.risk_aversion,
                          belief_tokens=settings.belief_tokens, max_prompt_tokens=768, batch_size=settings.batch_size)
        trainer.attach()
        before = evaluate(llm, market, arms, heldout, settings, child_seed(seed, "evaluate"), trained=False)
        log = train(llm, trainer, market, arms, train_dates, settings, seed)
        after = evaluate(llm, market, arms, heldout, settings, child_seed(seed, "evaluate"), trained=True)
    seconds = round(time.perf_counter() - started, 1)
    returns = [market.next_return(date, mirrored) for date, mirrored in heldout]
    records = []
    for index, (arm, categories) in enumerate(arms):
        series = {"returns": returns, "trained": (after[index].pop("decisions"), after[index].pop("expected")),
                  "untrained": (before[index].pop("decisions"), before[index].pop("expected")),
                  "factor": ([market.first_factor(date, categories, mirrored) for date, mirrored in heldout], None),
                  "momentum": ([market.momentum(date, mirrored) for date, mirrored in heldout], None),
                  "buy_and_hold": ([10.0] * len(heldout), None)}
        records.append({"seed": seed, "arm": arm, "before": before[index], "after": after[index], "training_log": [entry[index] for entry in log],
                        "out_of_sample": out_of_sample(series, child_seed(seed, "bootstrap", arm)), "series": series, "seconds": seconds})
    return records


def out_of_sample(series: dict, seed: int) -> dict:
    """Per strategy: every metric of `analysis.evaluation` as (value, 95 % low, high) on the held-out states."""
    figures = {}
    for strategy in STRATEGIES:
        decisions, expected = series[strategy]
        metrics = evaluate_strategy(np.array(decisions), np.array(series["returns"]), None if expected is None else np.array(expected), seed=child_seed(seed, strategy))
        figures[strategy] = {metric.name: (metric.value, metric.ci_low, metric.ci_high) for metric in metrics}
    return figures


def pooled_out_of_sample(rows: list[dict]) -> dict:
    """`out_of_sample` over every seed's held-out states at once (seeds' markets are independent)."""
    pooled = {"returns": [value for row in rows for value in row["series"]["returns"]]}
    for strategy in STRATEGIES:
        expected = [row["series"][strategy][1] for row in rows]
        pooled[strategy] = ([value for row in rows for value in row["series"][strategy][0]],
                            None if expected[0] is None else [value for values in expected for value in values])
    return out_of_sample(pooled, 0)


def train(llm: LLM, trainer: Trainer, market: Market, arms, dates: list[pd.Timestamp], settings: Settings, seed: int) -> list[list[dict]]:
    """`phases` phases: each agent decides on `states` train dates, is paid, and every adapter updates."""
    log, history = [], {agent: [] for agent in range(len(arms))}
    for phase in range(1, settings.phases + 1):
        started = time.perf_counter()
        rng = np.random.default_rng(child_seed(seed, "states", phase))
        picked = [dates[i] for i in rng.choice(len(dates), settings.states, replace=False)]
        requests = [(agent, date) for agent in range(len(arms)) for date in picked]
        completions = llm.generate([market.prompt(date, arms[agent][1]) for agent, date in requests], [settings.temperature] * len(requests),
                                   [agent for agent, _ in requests], belief_tokens=settings.belief_tokens, batch_size=settings.batch_size,
                                   seed=child_seed(seed, "act", phase), exact=False)
        for (agent, date), completion in zip(requests, completions):
            history[agent].append(sample_from_completion(  # step = the date's place in time: a phase holds back the latest dates
                completion, agent_id=agent, step=dates.index(date), realised_return=market.next_return(date),
                reward=reward(settings.reward, market.next_return(date), completion.decision_depth, risk_preference=PERSONA.risk_preference,
                              risk_aversion=settings.risk_aversion, recent_variance=float(market.variance.loc[date])),
                temperature=settings.temperature, risk_preference=PERSONA.risk_preference, recent_variance=float(market.variance.loc[date]),
                adapter_version=phase - 1))
        rows = trainer.run_phase(phase, phase, {agent: list(samples) for agent, samples in history.items()}, seed=child_seed(seed, "phase", phase))
        seconds = round(time.perf_counter() - started, 1)
        log.append([{"phase": phase, "seconds": seconds, **{key: getattr(row, key) for key in (
            "epochs", "kept_epoch", "loss", "decision_kl", "belief_kl", "heldout_pay_before", "heldout_pay_after", "heldout_t", "belief_advantage_std", "reward_mean")}} for row in rows])
        print(f"seed {seed} phase {phase}/{settings.phases} ({seconds} s): " + "  ".join(
            f"{arm} held-back pay {_text(row.heldout_pay_before)} -> {_text(row.heldout_pay_after)} (epoch {row.kept_epoch}/{row.epochs}, t {_text(row.heldout_t)})"
            for (arm, _), row in zip(arms, rows)), flush=True)
    return log


def evaluate(llm: LLM, market: Market, arms, states: list[tuple[pd.Timestamp, bool]], settings: Settings, seed: int, *, trained: bool) -> list[dict]:
    """Held-out figures per agent, from one batched generate at a fixed seed (this seed's rows only)."""
    requests = [(agent, state) for agent in range(len(arms)) for state in states]
    completions = llm.generate([market.prompt(date, arms[agent][1], mirrored) for agent, (date, mirrored) in requests], [settings.temperature] * len(requests),
                               [agent for agent, _ in requests], belief_tokens=settings.belief_tokens, batch_size=settings.batch_size, seed=seed)
    results = []
    for agent in range(len(arms)):
        mine = [completion for (owner, _), completion in zip(requests, completions) if owner == agent]
        returns = np.array([market.next_return(date, mirrored) for date, mirrored in states])
        sampled = np.array([completion.decision_depth for completion in mine])
        expected = np.array([completion.expected_decision for completion in mine])
        other = expected_with_other_beliefs(llm, agent, mine, settings) if trained else None
        kl = None
        if trained:
            examples = [completion for (date, mirrored), completion in zip(states, mine) if not mirrored][: settings.kl_examples]
            kl = statistics.fmean(value for value in belief_kl(llm, [agent] * len(examples), examples, [settings.temperature] * len(examples), settings.belief_tokens) if value is not None)
        results.append({
            "corr_expected": corr(expected, returns), "corr_sampled": corr(sampled, returns),
            "mean_reward": float(np.mean(returns * sampled)), "mean_expected_reward": float(np.mean(returns * expected)),
            "belief_value": float(np.mean(returns * expected) - np.mean(returns * other)) if trained else None,
            "mean_decision": float(expected.mean()), "decision_std": float(sampled.std()),
            "belief_text_share": belief_text_share([c.belief for c in mine], [c.prompt for c in mine]),
            "belief_kl": kl if trained else 0.0,  # fresh adapters are the base model: KL = 0 exactly
            "beliefs": [f"{c.belief} => {c.decision_depth:+.1f} (E {c.expected_decision:+.2f})" for (_, mirrored), c in zip(states, mine) if not mirrored][:3],
            "decisions": sampled.tolist(), "expected": expected.tolist(),
        })
    return results


@torch.no_grad()
def expected_with_other_beliefs(llm: LLM, agent: int, completions: list[Completion], settings: Settings) -> np.ndarray:
    """E[d] for each prompt after the belief the agent wrote for the next state in the list (another
    date's, or the same date's mirror): what the decision is worth without its own belief."""
    parts = [split_tokens(llm.slot, settings.belief_tokens, completion.completion_ids) for completion in completions]
    donors = parts[2:] + parts[:2]  # two states on: another date, the same view (states alternate original, mirror)
    values = []
    for start in range(0, len(completions), settings.batch_size):
        chunk = slice(start, start + settings.batch_size)
        count = len(completions[chunk])
        scored = score(llm, [c.prompt_ids for c in completions[chunk]], [p.belief_ids for p in donors[chunk]],
                       [p.marker_ids for p in donors[chunk]], [agent] * count, torch.full((count,), settings.temperature), beliefs_needed=False)
        values.append(llm.tree.expected_value(scored.outcome_logprobs).cpu())
    return torch.cat(values).numpy()


def corr(decisions: np.ndarray, returns: np.ndarray) -> float:
    """Pearson correlation; 0 when the decisions do not vary (a constant policy has no edge)."""
    if decisions.std() == 0 or returns.std() == 0:
        return 0.0
    return float(np.corrcoef(decisions, returns)[0, 1])


METRICS = ("corr_expected", "corr_sampled", "mean_reward", "mean_expected_reward", "belief_text_share", "belief_kl", "mean_decision")


def summarise(agents: list[dict]) -> dict:
    """Per arm: mean ± standard error over seeds of each metric before and after and of its gain."""
    summary = {}
    for arm in ARMS:
        rows = [agent for agent in agents if agent["arm"] == arm]
        summary[arm] = {**before_after(rows, METRICS), "belief_value_after": spread([row["after"]["belief_value"] for row in rows]),
                        "out_of_sample_pooled": pooled_out_of_sample(rows)}
    return summary


def before_after(rows: list[dict], metrics) -> dict:
    """`<metric>_before`, `_after` and `_gain` of one arm's seeds, each as `spread`."""
    figures = {}
    for metric in metrics:
        for label in ("before", "after"):
            figures[f"{metric}_{label}"] = spread([row[label][metric] for row in rows])
        figures[f"{metric}_gain"] = spread([row["after"][metric] - row["before"][metric] for row in rows])
    return figures


def run_seeds(run_seed, settings, cpus_per_seed: float, address: str | None = None) -> list[dict]:
    """`run_seed(settings, seed)` for every seed, each a Ray task in a fresh process; their records in seed order."""
    by_seed: dict[int, list[dict]] = {}
    with JobRunner(cpus_per_job=cpus_per_seed, address=address) as runner:
        for job in runner.run(run_seed, [(settings, seed) for seed in settings.seeds]):
            seed = settings.seeds[job.index]
            if not job.ok:
                raise SystemExit(f"seed {seed} failed: {job.error}")
            by_seed[seed] = job.value
            print(f"seed {seed} done in {job.seconds:.0f} s", flush=True)
    return [record for seed in settings.seeds for record in by_seed[seed]]


def spread(values: list[float]) -> dict:
    error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "se": error, "values": values}


def report(result: dict) -> str:
    lines = [f"learning benchmark: seeds {result['settings']['seeds']}, {result['seconds']:.0f} s ({result['provenance']['commit'][:10]})", ""]
    header = f"{'seed':>4} {'arm':8} {'corr E[d] b -> a':>17} {'corr d b -> a':>15} {'reward b -> a':>19} {'belief value a':>14} {'text share b -> a':>17} {'belief KL':>9} {'E[d] a':>7} {'min':>5}"
    lines += [header, "-" * len(header)]
    for agent in result["agents"]:
        b, a = agent["before"], agent["after"]
        lines.append(f"{agent['seed']:>4} {agent['arm']:8} {b['corr_expected']:>+8.3f} {a['corr_expected']:>+8.3f} {b['corr_sampled']:>+7.3f} {a['corr_sampled']:>+7.3f} "
                     f"{b['mean_reward']:>+9.4f} {a['mean_reward']:>+9.4f} {a['belief_value']:>+14.5f} {b['belief_text_share']:>8.2f} {a['belief_text_share']:>8.2f} "
                     f"{a['belief_kl']:>9.3f} {a['mean_decision']:>+7.2f} {agent['seconds'] / 60:>5.1f}")
    lines.append("")
    for arm, figures in result["summary"].items():
        parts = []
        for metric in ("corr_expected", "corr_sampled", "mean_reward", "belief_text_share"):
            after, gain = figures[f"{metric}_after"], figures[f"{metric}_gain"]
            parts.append(f"{metric} after {after['mean']:+.4f}{_se(after)} (gain {gain['mean']:+.4f}{_se(gain)})")
        parts.append(f"belief value {figures['belief_value_after']['mean']:+.5f}{_se(figures['belief_value_after'])}")
        lines.append(f"{arm}: " + "; ".join(parts))
    treated = result["summary"]["treated"]["corr_expected_after"]["values"]
    lines.append(f"treated seeds with held-out corr(E[d], r) >= 0.35 after training: {sum(value >= 0.35 for value in treated)}/{len(treated)}")
    lines += ["", "out of sample against baselines, every seed's held-out states pooled (95 % block-bootstrap intervals):"]
    for arm, figures in result["summary"].items():
        pooled = figures["out_of_sample_pooled"]
        lines.append(f"  {arm}: {'strategy':12} {'corr E[d]':>24} {'corr d':>24} {'mean pay':>30} {'hit rate':>22} {'Sharpe (s.e.)':>16} {'days':>5}")
        for strategy, metric in pooled.items():
            lines.append(f"  {'':{len(arm)}}  {strategy:12} {_interval(metric.get('corr_expected')):>24} {_interval(metric['corr']):>24} {_interval(metric['mean_pay'], 5):>30} "
                         f"{_interval(metric['hit_rate']):>22} {_value(metric['sharpe'][0], 2):>7} ({metric['sharpe_se'][0]:.2f}) {int(metric['days'][0]):>5}")
    lines.append("")
    for agent in result["agents"][:2]:
        lines.append(f"beliefs of seed {agent['seed']} {agent['arm']} (belief => decision):")
        lines += [f"  before: {text}" for text in agent["before"]["beliefs"]]
        lines += [f"  after:  {text}" for text in agent["after"]["beliefs"]]
    return "\n".join(lines)


def _se(figure: dict) -> str:
    return f" ± {figure['se']:.4f}" if figure["se"] is not None else ""


def _value(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _interval(metric: tuple | None, digits: int = 3) -> str:
    if metric is None:
        return "-"
    value, low, high = metric
    return _value(value, digits) if low is None else f"{_value(value, digits)} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def parse_settings(pairs: list[str], base: dict | None = None) -> Settings:
    """Settings from `key=value` pairs (dotted keys into sections, values as TOML) on `base` and
    the defaults, validated whole."""
    return override_model(Settings.model_validate(base or {}), pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", help="market seeds (default 0-5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (dotted keys, TOML values), e.g. training.step_size=2 or phases=6")
    parser.add_argument("--quick", action="store_true", help="one seed, tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, help="JSON result file (default benchmarks/results/learning.json)")
    parser.add_argument("--cpus-per-seed", type=float, default=float(cpu_count()), help="CPUs (torch threads) per seed; default all: one seed at a time")
    parser.add_argument("--address", help="an existing Ray cluster (auto, or HOST:PORT); default: a local Ray")
    args = parser.parse_args()
    settings = parse_settings(args.set + ([f"seeds={args.seeds}"] if args.seeds else []), QUICK if args.quick else None)
    recorded = provenance()  # the code as it is when the run starts
    started = time.perf_counter()
    agents = run_seeds(run_seed, settings, args.cpus_per_seed, args.address)
    result = {"settings": settings.model_dump(), "cpus_per_seed": args.cpus_per_seed, "provenance": recorded, "seconds": round(time.perf_counter() - started, 1),
              "agents": agents, "summary": summarise(agents)}
    print(report(result))
    write_result(args.out or RESULTS_DIR / f"learning{'-quick' if args.quick else ''}.json", result)


if __name__ == "__main__":
    main()
