"""Prompts: persona traits and visible market information, turned into a short chat.

The persona (optimism, rationality, risk preference in [0, 1]) becomes the system message; the
agent's visible factors, any news it may read, and its memory become the user message. Numbers are
rounded and the text is kept compact: on a 2-core CPU the prompt's length is most of a step's cost.
The model is asked only for the belief; the decision slot is forced by `agents.decoding`.
The calendar date is deliberately left out: a model that has read the news of a real date in its
pretraining data could otherwise recall what came next, a look-ahead no factor filter can stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

ASSET_PLACEHOLDER = "{asset}"
DEFAULT_STRATEGY = "In one sentence, state your belief about {asset}'s return tomorrow."  # the strategy prompt APO rewrites


def render_strategy(strategy: str, asset: str) -> str:
    """The strategy prompt for one asset: its only placeholder filled, nothing else read as a template."""
    return strategy.replace(ASSET_PLACEHOLDER, asset)


@dataclass(frozen=True)
class Persona:
    optimism: float         # 0 = pessimistic, 1 = optimistic
    rationality: float      # 0 = gut feeling, 1 = careful reasoning from the numbers
    risk_preference: float  # 0 = small positions, 1 = large positions


@dataclass(frozen=True)
class Memory:
    """What an agent remembers of one past step."""

    date: str
    belief: str
    decision_depth: float
    realised_return: float  # simple return, 0.01 = +1 %
    reward: float


def _grade(value: float, low: str, middle: str, high: str) -> str:
    return low if value < 0.35 else high if value > 0.65 else middle


def system_message(persona: Persona) -> str:
    mood = _grade(persona.optimism, "You are a pessimistic investor who expects bad news.", "You are a balanced investor.", "You are an optimistic investor who expects prices to rise.")
    reasoning = _grade(persona.rationality, "You trade on gut feeling and recent moves.", "You weigh the numbers and your instinct.", "You reason carefully from the numbers.")
    risk = _grade(persona.risk_preference, "You prefer small, cautious positions.", "You take moderate positions.", "You take large positions when you have a view.")
    return f"{mood} {reasoning} {risk}"


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def user_message(
    *,
    asset: str,
    price: float,
    factors: pd.DataFrame,
    news: list[str],
    memory: list[Memory],
    strategy: str = DEFAULT_STRATEGY,
) -> str:
    """The market as this agent may see it (no date: see the module docstring), then the agent's
    strategy prompt: the instruction that shapes its belief, the one line APO may rewrite.

    `factors` has columns category, name, value.
    """
    lines = [f"{asset} price {price:.2f}."]
    for category, rows in factors.groupby("category", sort=True):
        values = ", ".join(f"{name}={_signed(value)}" for name, value in zip(rows["name"], rows["value"]))
        lines.append(f"{category.capitalize()} factors: {values}.")
    lines += [f"News: {text}" for text in news]
    if memory:
        history = ", ".join(f"{m.decision_depth:+.0f} then {m.realised_return * 100:+.1f}%" for m in memory)
        lines.append(f"Your recent trades (decision then next-day return): {history}.")
    lines.append(render_strategy(strategy, asset))
    return "\n".join(lines)
