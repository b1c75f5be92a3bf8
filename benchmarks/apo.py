"""APO benchmark: can a frozen model's agents learn the planted signal by rewriting their strategy prompts?

The market and the two arms are the learning benchmark's (`benchmarks/learning.py`): a synthetic
market with the signal planted in `fundamental`; **treated** reads it, **control** reads
`sentiment` (noise). The model is frozen SmolLM2-135M, as the agents and as the optimizer. Per
seed and phase, each agent decides on `states` random train dates with its current strategy
prompt, is paid, and one APO phase (`training/apo.py`) critiques, rewrites, replays and selects.
Evaluated on the later held-out dates (each also mirrored) before and after: corr(E[d], next
return), the mean pay of E[d] and of the sampled decision, text share; and per phase the tokens
and seconds spent on critiques, rewrites and replays, and the prompts.

    python -m benchmarks.apo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from agents.llm import LLM
from agents.prompts import DEFAULT_STRATEGY
from benchmarks.learning import ARMS, PERSONA, Market, before_after, corr, run_seeds
from benchmarks.results_file import RESULTS_DIR, write_result
from core.overrides import override_model
from core.parallel import cpu_count
from core.provenance import provenance
from core.schema import Section
from core.seeding import child_seed
from market.payoff import reward
from training.apo import PromptOptimizer, ReplayState
from training.belief_quality import belief_text_share
from training.config import APOConfig, TrainingConfig


class Settings(Section):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="Market seeds; each runs alone.")
    model: str = Field("packaged", description="The frozen model, agents and optimizer.")
    signal: float = Field(0.6, gt=0.0, lt=1.0)
    train_dates: int = Field(120, ge=8)
    heldout_dates: int = Field(24, ge=4, description="Later dates evaluated, each also mirrored.")
    phases: int = Field(2, ge=1)
    states: int = Field(12, ge=2, description="Train dates each agent decides on per phase (the phase replays these).")
    temperature: float = Field(1.0, gt=0.0, le=2.0)
    belief_tokens: int = Field(16, ge=4)
    batch_size: int = Field(64, ge=1)
    apo: APOConfig = Field(default_factory=lambda: APOConfig(candidates=3, beam=1, examples=4, critique_tokens=48, prompt_tokens=32))

    # the fields Market reads from the learning benchmark's settings
    reward: str = "linear"
    risk_aversion: float = 20.0


def evaluate(llm: LLM, market: Market, strategies: dict[int, str], states, settings: Settings, seed: int) -> list[dict]:
    requests = [(agent, state) for agent in range(len(ARMS)) for state in states]
    arms = list(ARMS.values())
    completions = llm.generate([market.prompt(date, arms[agent], mirrored, strategy=strategies[agent]) for agent, (date, mirrored) in requests],
                               [settings.temperature] * len(requests), None, belief_tokens=settings.belief_tokens, batch_size=settings.batch_size, seed=seed)
    returns = np.array([market.next_return(date, mirrored) for date, mirrored in states])
    results = []
    for agent in range(len(ARMS)):
        mine = [completion for (owner, _), completion in zip(requests, completions, strict=True) if owner == agent]
        expected = np.array([c.expected_decision for c in mine])
        sampled = np.array([c.decision_depth for c in mine])
        results.append({"corr_expected": corr(expected, returns), "corr_sampled": corr(sampled, returns),
                        "mean_expected_reward": float(np.mean(returns * expected)), "mean_reward": float(np.mean(returns * sampled)),
                        "belief_text_share": belief_text_share([c.belief for c in mine], [c.prompt for c in mine]),
                        "strategy": strategies[agent], "beliefs": [c.belief for c in mine[:2]]})
    return results


def run_seed(settings: Settings, seed: int) -> list[dict]:
    started = time.perf_counter()
    llm = LLM.load(settings.model)
    market = Market(llm, seed, settings)
    train_dates, heldout = market.train_dates, market.heldout
    config = TrainingConfig(method="apo", max_samples=settings.states, apo=settings.apo)
    optimizer = PromptOptimizer(llm, llm, config, [0, 1], [market.asset], reward=settings.reward, risk_aversion=settings.risk_aversion,
                                belief_tokens=settings.belief_tokens, max_prompt_tokens=768, batch_size=settings.batch_size)
    strategies = {agent: DEFAULT_STRATEGY for agent in range(len(ARMS))}
    before = evaluate(llm, market, strategies, heldout, settings, child_seed(seed, "evaluate"))
    arms = list(ARMS.values())
    phases = []
    for phase in range(1, settings.phases + 1):
        phase_started = time.perf_counter()
        rng = np.random.default_rng(child_seed(seed, "states", phase))
        picked = sorted(train_dates[i] for i in rng.choice(len(train_dates), settings.states, replace=False))
        requests = [(agent, date) for agent in range(len(ARMS)) for date in picked]
        prompts = [market.prompt(date, arms[agent], strategy=strategies[agent]) for agent, date in requests]
        completions = llm.generate(prompts, [settings.temperature] * len(requests), None, belief_tokens=settings.belief_tokens,
                                   batch_size=settings.batch_size, seed=child_seed(seed, "act", phase))
        states: dict[int, list[ReplayState]] = {agent: [] for agent in range(len(ARMS))}
        for index, ((agent, date), completion) in enumerate(zip(requests, completions, strict=True)):
            variance = float(market.variance.loc[date])
            paid = reward(settings.reward, market.next_return(date), completion.decision_depth, risk_preference=PERSONA.risk_preference,
                          risk_aversion=settings.risk_aversion, recent_variance=variance)
            seen = " ".join(line.strip() for line in completion.prompt.splitlines() if "factors:" in line)
            states[agent].append(ReplayState(step=index, asset=market.asset, prompt=completion.prompt, strategy=strategies[agent], seen=seen,
                                             belief=completion.belief, decision=completion.decision_depth, reward=paid,
                                             realised_return=market.next_return(date), temperature=settings.temperature,
                                             risk_preference=PERSONA.risk_preference, recent_variance=variance))
        result = optimizer.run_phase(phase, phase, states, seed=child_seed(seed, "phase", phase))
        strategies = {agent: text for agent, (_, text) in result.current.items()}
        usage = pd.DataFrame(result.usage).groupby("purpose")[["prompt_tokens", "completion_tokens", "seconds"]].sum().round(1).to_dict("index")
        rewrites = [row for row in result.prompts if row.parent_version is not None]
        phases.append({"phase": phase, "seconds": round(time.perf_counter() - phase_started, 1), "usage": usage,
                       "rewrites": len(rewrites), "rejected": sum(row.reason.startswith("rejected") for row in rewrites),
                       "adopted": sum(row.adopted for row in rewrites), "replay_gain": result.replay_gain,
                       "critiques": [c["text"] for c in result.critiques], "rewrite_texts": [(row.agent_id, row.text, row.reason) for row in rewrites]})
        print(f"seed {seed} phase {phase}: {len(rewrites)} rewrites, {phases[-1]['rejected']} rejected, {phases[-1]['adopted']} adopted; "
              f"{phases[-1]['seconds']} s", flush=True)
    after = evaluate(llm, market, strategies, heldout, settings, child_seed(seed, "evaluate"))
    seconds = round(time.perf_counter() - started, 1)
    return [{"seed": seed, "arm": arm, "before": before[index], "after": after[index], "seconds": seconds,
             "phases": [{**entry, "replay_gain": entry["replay_gain"].get(index),
                         "rewrite_texts": [r for r in entry["rewrite_texts"] if r[0] == index]} for entry in phases]}
            for index, arm in enumerate(ARMS)]


def summarise(agents: list[dict]) -> dict:
    summary = {}
    for arm in ARMS:
        rows = [agent for agent in agents if agent["arm"] == arm]
        figures = before_after(rows, ("corr_expected", "corr_sampled", "mean_expected_reward", "mean_reward", "belief_text_share"))
        figures["prompts_changed"] = sum(row["after"]["strategy"] != row["before"]["strategy"] for row in rows)
        summary[arm] = figures
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cpus-per-seed", type=float, default=float(cpu_count()))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "apo-seeds0-2.json")
    args = parser.parse_args()
    settings = override_model(Settings(), args.set + ([f"seeds={args.seeds}"] if args.seeds else []))
    recorded = provenance()
    started = time.perf_counter()
    agents = run_seeds(run_seed, settings, args.cpus_per_seed)
    summary = summarise(agents)
    for arm, figures in summary.items():
        print(f"{arm}: corr(E[d], r) {figures['corr_expected_before']['mean']:+.3f} -> {figures['corr_expected_after']['mean']:+.3f} "
              f"(gain {figures['corr_expected_gain']['mean']:+.3f} ± {figures['corr_expected_gain']['se'] or 0:.3f}), "
              f"pay of E[d] {figures['mean_expected_reward_before']['mean']:+.5f} -> {figures['mean_expected_reward_after']['mean']:+.5f}, "
              f"text share {figures['belief_text_share_after']['mean']:.2f}, prompts changed in {figures['prompts_changed']}/{len(settings.seeds)} seeds")
    write_result(args.out, {"settings": settings.model_dump(), "cpus_per_seed": args.cpus_per_seed, "provenance": recorded,
                            "seconds": round(time.perf_counter() - started, 1), "agents": agents, "summary": summary})


if __name__ == "__main__":
    main()
