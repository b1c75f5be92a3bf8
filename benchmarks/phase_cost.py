"""What one training phase costs on this machine: seconds per agent and per sample.

Builds the base scenario's situation without running a simulation: N agents, each with
`--samples` completions written by the real model on synthetic market prompts (persona, factors
and a 3-step memory, as the simulation writes them), then times `Trainer.run_phase` with the
scenario's [training] settings, optionally overridden on the command line.

    python -m benchmarks.phase_cost                       # base.toml's [training], 8 agents
    python -m benchmarks.phase_cost --set max_samples=0 --set epochs=2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from agents.llm import LLM
from benchmarks.learning import MarketPrompts, RESULTS_DIR
from simulation.config import load_scenario
from training.phase import Trainer
from training.rewards import reward
from training.samples import sample_from_completion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="scenarios/base.toml")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20, help="samples per agent since the last phase (base: training.every)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a [training] key (JSON value)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scenario = load_scenario(args.scenario)
    overrides = {key: _value(value) for key, value in (item.split("=", 1) for item in args.set)}
    config = scenario.training.model_copy(update=overrides)
    model_config = scenario.model
    llm = LLM.load(model_config.path, model_config.gguf_file, model_config.device, model_config.dtype)
    agent_ids = list(range(args.agents))
    groups = [group for group in scenario.agents.groups for _ in range(group.count)]
    prompts = MarketPrompts(llm, seed=args.seed, signal=scenario.data.synthetic.signal, n_days=args.samples + 30)
    dates = prompts.dates[25:25 + args.samples]

    with tempfile.TemporaryDirectory() as adapter_dir:
        trainer = Trainer(llm, config, Path(adapter_dir), agent_ids, belief_tokens=model_config.belief_tokens,
                          max_prompt_tokens=model_config.max_prompt_tokens, batch_size=model_config.batch_size)
        trainer.attach()
        requests = [(agent_id, date) for agent_id in agent_ids for date in dates]
        specs = {agent_id: groups[agent_id % len(groups)] for agent_id in agent_ids}
        texts = [prompts.prompt(date, specs[agent_id].categories, memory_length=specs[agent_id].memory_length) for agent_id, date in requests]
        started = time.perf_counter()
        completions = llm.generate(texts, [specs[a].temperature for a, _ in requests], [trainer.adapter_name(a) for a, _ in requests],
                                   belief_tokens=model_config.belief_tokens, max_prompt_tokens=model_config.max_prompt_tokens,
                                   batch_size=model_config.batch_size, seed=args.seed)
        generation_seconds = time.perf_counter() - started
        samples: dict[int, list] = {agent_id: [] for agent_id in agent_ids}
        for step, ((agent_id, date), completion) in enumerate(zip(requests, completions)):
            realised = prompts.next_return(date)
            spec = specs[agent_id]
            samples[agent_id].append(sample_from_completion(
                completion, agent_id=agent_id, step=dates.index(date), realised_return=realised,
                reward=reward("linear", realised, completion.decision_depth), temperature=spec.temperature,
                risk_preference=spec.risk_preference, recent_variance=1e-4))
        started = time.perf_counter()
        rows = trainer.run_phase(1, len(dates) - 1, samples, seed=args.seed,
                                 on_agent_done=lambda row: print(f"  agent {row.agent_id}: {row.samples} samples, loss {row.loss:+.3f}, kl {row.kl:.4f}, {row.seconds:.1f} s"))
        phase_seconds = time.perf_counter() - started

    trained = sum(row.samples for row in rows)
    prompt_tokens = sum(len(c.prompt_ids) for c in completions) / len(completions)
    completion_tokens = sum(len(c.completion_ids) for c in completions) / len(completions)
    result = {
        "device": str(llm.device), "dtype": str(llm.dtype), "threads": torch.get_num_threads(), "agents": args.agents,
        "samples_per_agent_offered": args.samples, "samples_trained": trained,
        "mean_prompt_tokens": round(prompt_tokens, 1), "mean_completion_tokens": round(completion_tokens, 1),
        "training": {key: value for key, value in config.model_dump().items() if key not in ("enabled", "every")},
        "phase_seconds": round(phase_seconds, 2), "seconds_per_agent": round(phase_seconds / args.agents, 2),
        "seconds_per_sample": round(phase_seconds / max(trained, 1), 3),
        "generation_seconds_per_completion": round(generation_seconds / len(completions), 3),
    }
    print(json.dumps(result, indent=2))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "phase_cost_" + "_".join(f"{k}-{v}" for k, v in overrides.items()).replace("/", "") if overrides else "phase_cost"
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2))


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


if __name__ == "__main__":
    main()
