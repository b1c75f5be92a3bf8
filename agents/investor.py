"""The investor agent: a persona, the factor categories it may read, and a short memory.

An agent does not call the model itself: the model step asks every agent for its prompt, sends
all prompts through the LLM in one batch (each row with the agent's own adapter), and hands each
agent its completion and payoff back. That keeps deliberation batched while the agent still owns
what is private to it: what it may see, what it remembers, and what it has earned.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import mesa
import pandas as pd

from agents.prompts import (
    DEFAULT_STRATEGY,
    Memory,
    Persona,
    system_message,
    user_message,
)


@dataclass(frozen=True)
class AgentSpec:
    agent_id: int              # 0..N-1 in scenario order
    group: str
    visible_categories: tuple[str, ...]
    persona: Persona
    temperature: float
    memory_length: int
    seed: int


@dataclass(frozen=True)
class Observation:
    """What one agent sees of one asset at one step, and the prompt built from it."""

    agent_id: int
    asset: str
    factors: pd.DataFrame      # category, name, factor_date, value
    system: str
    user: str


class InvestorAgent(mesa.Agent):
    def __init__(self, model: mesa.Model, spec: AgentSpec):
        super().__init__(model)
        self.spec = spec
        self.memory: deque[Memory] = deque(maxlen=spec.memory_length)
        self.wealth = 1.0               # in units of initial capital
        self.cumulative_reward = 0.0
        self.last_decision: float | None = None
        self.last_belief = ""
        self.strategy = DEFAULT_STRATEGY  # the strategy prompt; APO phases may replace it
        self.strategy_version = 0

    @property
    def agent_id(self) -> int:
        return self.spec.agent_id

    def observe(self, *, asset: str, price: float, factors: pd.DataFrame, news: list[str], use_memory: bool = True) -> Observation:
        """The agent's view: only its own categories (the factor store already filtered them)."""
        user = user_message(asset=asset, price=price, factors=factors, news=news, memory=list(self.memory) if use_memory else [], strategy=self.strategy)
        return Observation(self.agent_id, asset, factors, system_message(self.spec.persona), user)

    def settle(self, *, date: str, belief: str, decision_depth: float, realised_return: float, reward: float) -> None:
        """Get paid for a decision and remember it. Position = depth / 10 of wealth."""
        self.wealth *= 1.0 + decision_depth / 10.0 * realised_return
        self.cumulative_reward += reward
        self.last_decision, self.last_belief = decision_depth, belief
        self.memory.append(Memory(date, belief, decision_depth, realised_return, reward))
