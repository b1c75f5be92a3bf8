"""Sign probe: can an agent's LoRA adapter learn to read the planted factor at all, given the answer?

A supervised upper bound for the learning benchmark. When RL learns no timing, the cause is either
the model (its adapter cannot carry "value_score is positive" to the decision slot past a belief)
or the learning signal. This probe removes the signal's problems: every train date of the learning
benchmark gets the base model's own belief, then the decision `+5` if the planted factor
`value_score` is positive and `-5` if not, and the adapter (the benchmark's LoRA config, its
learning rate, micro-batches of 8) is trained by cross-entropy on the number tokens only.

Reported every 20 steps, in sample (the 120 train dates) and held out (the 96 later dates and their
mirrors): corr(P(the number starts with +), value_score), teacher-forced on the base beliefs.
A rise held out means the adapter can learn the map from the factor to the decision's sign.

    python -m benchmarks.sign_probe                 # seed 3, 60 steps (about 7 min on 2 CPU cores)
    python -m benchmarks.sign_probe --seed 4 --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from agents.decoding import number_start
from agents.llm import LLM
from benchmarks.learning import TREATED, MarketPrompts, Settings, corr
from training.adapters import adapter_parameters
from training.phase import Trainer
from training.rl import Scored, build_batch, completion_logits, token_logprobs

SIGNAL_FACTOR = "value_score"
AGENT = 0


def factor_value(market: MarketPrompts, date: pd.Timestamp, mirrored: bool = False) -> float:
    return float(market.factors(date, TREATED, mirrored).set_index("name")["value"][SIGNAL_FACTOR])


def label(value: float) -> str:
    """The supervised decision for a planted-factor value: +5 when it is positive, -5 otherwise."""
    return "+5" if value > 0 else "-5"


def examples(llm: LLM, market: MarketPrompts, states: list[tuple[pd.Timestamp, bool]], belief_tokens: int, seed: int) -> list[tuple[float, int, Scored]]:
    """(factor value, position of the number's first token, completion to learn) per state: the base
    model's belief, the forced marker, then the label and a stop token."""
    name = Trainer.adapter_name(AGENT)
    completions = llm.generate([market.prompt(date, TREATED, mirrored=mirrored) for date, mirrored in states], [1.0] * len(states),
                               [name] * len(states), belief_tokens=belief_tokens, seed=seed)
    rows = []
    for (date, mirrored), completion in zip(states, completions):
        start = number_start(llm.slot, belief_tokens, completion.completion_ids)  # after the marker
        value = factor_value(market, date, mirrored)
        number = llm.tokenizer.encode(label(value), add_special_tokens=False) + [llm.slot.stop_ids[0]]
        item = Scored(completion.prompt_ids, completion.completion_ids[:start] + number, completion.trainable[:start] + [True] * len(number), 1.0)
        rows.append((value, start, item))
    return rows


def batch_of(llm: LLM, items: list[Scored], belief_tokens: int):
    return build_batch(items, llm.slot, belief_tokens, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)


@torch.no_grad()
def sign_corr(llm: LLM, rows: list[tuple[float, int, Scored]], belief_tokens: int) -> float:
    """corr(P(+ | prompt, belief, marker), factor value), where the slot chooses between + and -."""
    plus, minus = (llm.tokenizer.encode(sign, add_special_tokens=False)[0] for sign in ("+", "-"))
    probabilities, values = [], []
    for start in range(0, len(rows), 16):
        part = rows[start: start + 16]
        logits = completion_logits(llm.model, batch_of(llm, [item for _, _, item in part], belief_tokens))
        for row, (value, position, _) in enumerate(part):
            pair = torch.softmax(logits[row, position, [plus, minus]].float(), -1)
            probabilities.append(float(pair[0]))
            values.append(value)
    return corr(np.array(probabilities), np.array(values))


def probe(*, model: str, seed: int, steps: int, every: int = 20) -> list[dict]:
    settings = Settings()
    llm = LLM.load(model)
    market = MarketPrompts(llm, seed=seed, signal={"fundamental": settings.signal}, n_days=settings.train_dates + settings.heldout_dates + 2)
    train = [(date, False) for date in market.dates[: settings.train_dates]]
    held = [(date, mirrored) for date in market.dates[settings.train_dates: settings.train_dates + settings.heldout_dates] for mirrored in (False, True)]
    trainer = Trainer(llm, settings.training, Path(tempfile.mkdtemp()), [AGENT], belief_tokens=settings.belief_tokens, max_prompt_tokens=768, batch_size=32)
    trainer.attach()
    train_rows = examples(llm, market, train, settings.belief_tokens, seed=7)
    held_rows = examples(llm, market, held, settings.belief_tokens, seed=8)
    parameters = adapter_parameters(llm.model, Trainer.adapter_name(AGENT))
    optimizer = torch.optim.AdamW(parameters, lr=settings.training.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    started, step, history = time.perf_counter(), 0, []

    def record() -> None:
        history.append({"step": step, "insample": sign_corr(llm, train_rows, settings.belief_tokens),
                        "heldout": sign_corr(llm, held_rows, settings.belief_tokens), "seconds": round(time.perf_counter() - started, 1)})
        print(f"step {step:>4}: corr(P(+), {SIGNAL_FACTOR}) in sample {history[-1]['insample']:+.3f}, held out {history[-1]['heldout']:+.3f} ({history[-1]['seconds']:.0f} s)", flush=True)

    record()
    while step < steps:
        for indices in torch.randperm(len(train_rows), generator=generator).split(8):
            batch = batch_of(llm, [train_rows[i][2] for i in indices.tolist()], settings.belief_tokens)
            llm.model.train()
            logprobs = token_logprobs(completion_logits(llm.model, batch), batch)
            number = (batch.trainable & ~batch.belief).float()
            loss = -(logprobs * number).sum() / number.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, settings.training.grad_clip)
            optimizer.step()
            llm.model.eval()
            step += 1
            if step % every == 0 or step == steps:
                record()
            if step == steps:
                break
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="packaged", help="model path as in a scenario's [model] path (default: packaged SmolLM2-135M)")
    parser.add_argument("--seed", type=int, default=3, help="market seed (default 3)")
    parser.add_argument("--steps", type=int, default=60, help="supervised steps of 8 examples (default 60)")
    args = parser.parse_args()
    probe(model=args.model, seed=args.seed, steps=args.steps)


if __name__ == "__main__":
    main()
