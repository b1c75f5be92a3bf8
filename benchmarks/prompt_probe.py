"""Prompt probe: does the *untrained* model's decision follow the planted factor under a prompt?

A cheap check (under a minute on 2 CPU cores) to run before a 45-minute learning benchmark. RL
can only reinforce what the model already does sometimes: if some beliefs quote the planted
factor (`value_score` in the synthetic `fundamental` category) and the decision then follows that
factor's sign, training has a first-order route to timing (quote the right factor, copy its sign).
If not, the adapter has to build the factor -> decision link from scratch.

It asks the base model about the learning benchmark's held-out dates (each as it is and mirrored,
as `benchmarks.learning` evaluates them) with the treated agent's prompt, optionally with the
closing instruction replaced, and reports corr(decision, next return), corr(decision, factor)
for the signal and the noise factor, how often beliefs name each factor, and a few beliefs.

    python -m benchmarks.prompt_probe                          # the simulation's own prompt
    python -m benchmarks.prompt_probe --ask "In one sentence, name the factor that matters most and say what it means for {asset}'s return tomorrow." --belief-tokens 24
"""

from __future__ import annotations

import argparse

import numpy as np

from agents.llm import LLM
from benchmarks.learning import TREATED, MarketPrompts, Settings, corr

SIGNAL_FACTOR, NOISE_FACTOR = "value_score", "earnings_yield"


def probe(*, model: str, seed: int, ask: str | None, belief_tokens: int, temperature: float) -> dict:
    settings = Settings()
    llm = LLM.load(model)
    market = MarketPrompts(llm, seed=seed, signal={"fundamental": settings.signal}, n_days=settings.train_dates + settings.heldout_dates + 2)
    dates = market.dates[settings.train_dates: settings.train_dates + settings.heldout_dates]
    states = [(date, mirrored) for date in dates for mirrored in (False, True)]
    prompts = [market.prompt(date, TREATED, mirrored=mirrored, ask=ask) for date, mirrored in states]
    returns = [market.next_return(date, mirrored) for date, mirrored in states]
    factors = [market.factors(date, TREATED, mirrored).set_index("name")["value"] for date, mirrored in states]
    completions = llm.generate(prompts, [temperature] * len(prompts), belief_tokens=belief_tokens, seed=12345)
    decisions, returns = np.array([c.decision_depth for c in completions]), np.array(returns)
    result = {"corr_return": corr(decisions, returns), "mean_decision": float(decisions.mean()), "beliefs": [f"{c.belief} => {c.decision_depth:+.1f}" for c in completions[:6]]}
    for name in (SIGNAL_FACTOR, NOISE_FACTOR):
        values = np.array([float(f[name]) for f in factors])
        quoted = np.array([name.split("_")[0] in c.belief.lower() for c in completions])
        result[name] = {"corr": corr(decisions, values), "quoted_share": float(quoted.mean()),
                        "corr_when_quoted": corr(decisions[quoted], values[quoted]) if quoted.sum() > 5 else None}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="packaged", help="model path as in a scenario's [model] path (default: packaged SmolLM2-135M)")
    parser.add_argument("--seed", type=int, default=3, help="market seed (default 3)")
    parser.add_argument("--ask", help="closing instruction instead of the simulation's ({asset} = the asset)")
    parser.add_argument("--belief-tokens", type=int, default=16, help="most belief tokens (default 16, as the learning benchmark)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    args = parser.parse_args()
    result = probe(model=args.model, seed=args.seed, ask=args.ask, belief_tokens=args.belief_tokens, temperature=args.temperature)
    print(f"corr(decision, next return) {result['corr_return']:+.3f}   mean decision {result['mean_decision']:+.2f}")
    for name in (SIGNAL_FACTOR, NOISE_FACTOR):
        figures = result[name]
        when = f"{figures['corr_when_quoted']:+.3f}" if figures["corr_when_quoted"] is not None else "n/a"
        print(f"{name:>15}: corr(decision, factor) {figures['corr']:+.3f}   beliefs naming it {figures['quoted_share']:.2f}   corr among those {when}")
    for belief in result["beliefs"]:
        print("  ", belief)


if __name__ == "__main__":
    main()
