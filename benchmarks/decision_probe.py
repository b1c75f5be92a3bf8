"""Decision probe: how fast, and how safely, does the decision update alone learn the planted factor?

It isolates one question of the learning benchmark. Every train and held-out state of one seed's
planted market gets one belief from the base model, written once and then fixed; the treated
agent's adapter is trained on the decision only, with the trainer's own loss pieces
(training/rl.py), and after every few steps its exact expected decision E[d] on the held-out
states (and their mirrors) is correlated with the next return. No generation happens after the
start, so a run takes a few minutes and its only noise is the update's.

    python -m benchmarks.decision_probe --seed 3
    python -m benchmarks.decision_probe --seed 5 --objective gradient --steps 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents.decoding import split_tokens
from agents.llm import LLM
from agents.lora import LoraSpec
from agents.scoring import Trunk, pack, read
from benchmarks.learning import ARMS, Market, Settings, corr
from core.provenance import provenance
from core.seeding import child_seed
from training.hindsight import standardised_pay
from training.optimizer import AgentAdam


def mirror_target(old_value_logprobs: torch.Tensor, pay: torch.Tensor, step_size: float) -> torch.Tensor:
    """The mirror-descent target q(d) ∝ π_old(d) exp(η Q(d)), per row (the objective the trainer
    tried first; docs/experiments.md)."""
    return torch.softmax(old_value_logprobs + step_size * pay, dim=-1)


def probe(*, seed: int, objective: str, step_size: float, steps: int, micro_batch: int, learning_rate: float, train_dates: int, lora_layers: int, every: int, refresh: bool = False, trust: float = 0.0, center: bool = False) -> dict:
    settings = Settings(train_dates=train_dates)
    llm = LLM.load(settings.model)
    market = Market(llm, seed, settings)
    categories = ARMS["treated"]
    train = [(date, False) for date in market.dates[:train_dates]]
    held = [(date, mirrored) for date in market.dates[train_dates: train_dates + settings.heldout_dates] for mirrored in (False, True)]
    states = train + held
    cache = Path(f"/tmp/decision-probe-{seed}-{train_dates}.pt")
    if cache.exists():
        completions = torch.load(cache, weights_only=False)
    else:
        completions = llm.generate([market.prompt(date, categories, mirrored) for date, mirrored in states], [1.0] * len(states),
                                   belief_tokens=settings.belief_tokens, batch_size=settings.batch_size, seed=child_seed(seed, "probe-beliefs"))
        torch.save(completions, cache)
    layers = llm.model.config.num_hidden_layers
    llm.attach_adapters(1, LoraSpec(8, 16.0, tuple(settings.training.target_modules), tuple(range(layers - lora_layers, layers))))
    trunk = Trunk(llm, layers - lora_layers)
    parts = [split_tokens(llm.slot, settings.belief_tokens, completion.completion_ids) for completion in completions]
    inputs = [([c.prompt_ids], [p.belief_ids], [p.marker_ids]) for c, p in zip(completions, parts)]

    def packed(keys):
        return pack(llm, [inputs[k][0][0] for k in keys], [inputs[k][1][0] for k in keys], [inputs[k][2][0] for k in keys])

    for start in range(0, len(states), settings.batch_size):
        keys = list(range(start, min(start + settings.batch_size, len(states))))
        trunk.add(keys, packed(keys))
    returns = [market.next_return(date, mirrored) for date, mirrored in states]
    pay, _ = standardised_pay(returns[: len(train)], [0.5] * len(train), [0.0] * len(train), kind="linear", risk_aversion=0.0)
    held_keys = list(range(len(train), len(states)))

    @torch.no_grad()
    def distributions(keys):
        out = []
        for start in range(0, len(keys), settings.batch_size):
            chunk = keys[start:start + settings.batch_size]
            out.append(llm.tree.value_logprobs(read(llm, trunk.run(chunk, packed(chunk), [0] * len(chunk)), packed(chunk), torch.ones(len(chunk)), beliefs_needed=False).outcome_logprobs).cpu())
        return torch.cat(out)

    values = torch.tensor(llm.tree.outcome_values).unique()
    grid = torch.tensor([round(-10 + 0.1 * i, 1) for i in range(201)])
    start_train = distributions(list(range(len(train))))
    target = mirror_target(start_train, pay, step_size)
    held_returns = np.array(returns[len(train):])
    history = []
    parameters = llm.adapters.parameters()
    optimizer = AgentAdam(parameters, 1, learning_rate)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()

    def record(step):
        dist = distributions(held_keys).exp()
        expected = (dist * grid).sum(-1).numpy()
        history.append({"step": step, "heldout_corr_expected": corr(expected, held_returns),
                        "p_long": float(dist[:, grid > 0].sum(-1).mean()), "mean_expected": float(expected.mean()),
                        "seconds": round(time.perf_counter() - started, 1)})
        print(f"step {step:>3}: held-out corr(E[d], r) {history[-1]['heldout_corr_expected']:+.3f}  P(long) {history[-1]['p_long']:.2f}  E[d] {history[-1]['mean_expected']:+.2f}  ({history[-1]['seconds']} s)", flush=True)

    record(0)
    llm.model.train()
    step = 0
    while step < steps:
        if refresh and step > 0:
            llm.model.eval()
            target = mirror_target(distributions(list(range(len(train)))), pay, step_size)
            llm.model.train()
        for indices in torch.randperm(len(train), generator=generator).split(micro_batch):
            keys = indices.tolist()
            scored = read(llm, trunk.run(keys, packed(keys), [0] * len(keys)), packed(keys), torch.ones(len(keys)), beliefs_needed=False)
            log_values = llm.tree.value_logprobs(scored.outcome_logprobs)
            if objective == "mirror":
                loss = -(target[keys] * log_values).sum(-1).mean()
            else:
                probabilities = log_values.exp()
                batch_pay = pay[keys] - pay[keys].mean(0) if center else pay[keys]  # linear pay: centring the returns in the batch
                loss = -(probabilities * batch_pay).sum(-1).mean()
                if trust > 0:
                    loss = loss + trust * (probabilities * (log_values - start_train[keys])).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.clip(1.0)
            optimizer.step(torch.ones(1, dtype=torch.bool))
            step += 1
            if step % every == 0 or step == steps:
                llm.model.eval()
                record(step)
                llm.model.train()
            if step == steps:
                break
    del values
    return {"settings": {"seed": seed, "objective": objective, "step_size": step_size, "steps": steps, "micro_batch": micro_batch,
                         "learning_rate": learning_rate, "train_dates": train_dates, "lora_layers": lora_layers, "refresh": refresh, "trust": trust, "center": center},
            "provenance": provenance(), "history": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--objective", choices=("mirror", "gradient"), default="mirror", help="mirror-descent cross-entropy (the trainer's) or the plain gradient of E[Q]")
    parser.add_argument("--step-size", type=float, default=1.0, help="eta of the mirror target")
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--train-dates", type=int, default=120)
    parser.add_argument("--lora-layers", type=int, default=8)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--trust", type=float, default=0.0, help="gradient objective: weight of KL(pi || pi at the start)")
    parser.add_argument("--center", action="store_true", help="gradient objective: returns centred within each micro-batch")
    parser.add_argument("--refresh", action="store_true", help="mirror target recomputed from the current policy at every epoch")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = probe(seed=args.seed, objective=args.objective, step_size=args.step_size, steps=args.steps, micro_batch=args.micro_batch,
                   learning_rate=args.learning_rate, train_dates=args.train_dates, lora_layers=args.lora_layers, every=args.every, refresh=args.refresh, trust=args.trust, center=args.center)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
