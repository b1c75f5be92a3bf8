"""Measuring AED during a run: the agents answer a fixed probe set, with the environment frozen.

The probe set is K dates spread evenly over the run's dates (times each asset), fixed for the
whole run. At a measurement every agent sees each probe state as it would have then (its own
categories, the data's fundamental price, no news, no memory) and answers with its current
adapter (the model's `answer_probes`): a greedy belief, then the decision. AED's decision
dispersion is taken over each agent's exact expected decision after that belief, at its own
temperature (a greedy answer reads only the distribution's mode, which barely moves); a sampled
decision is stored beside it. Decisions and belief embeddings go to `analysis.aed`; drift is
taken against the previous measurement, read back from the database so a resumed run measures
the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from agents.llm import Completion
from analysis.aed import AEDResult, aed_rows, measure_aed
from analysis.embeddings import embed_beliefs, load_embedder
from core.store import RunStore
from simulation.scenario import AEDConfig

# Puts (step, date) probe states to every agent in one batch: completions as [probe][asset][agent].
Answer = Callable[[list[tuple[int, pd.Timestamp]]], list[list[list[Completion]]]]


@dataclass
class AEDMeasurement:
    result: AEDResult
    beliefs: list[list[str]]
    embedder: str
    sampled: np.ndarray

    @property
    def aed_decision(self) -> float:
        return self.result.aed_decision

    @property
    def aed_belief(self) -> float:
        return self.result.aed_belief

    def insert_into(self, store) -> None:
        for table, rows in aed_rows(self.result, self.beliefs, self.embedder, self.sampled).items():
            store.insert(table, rows)


class AEDMeter:
    """Picks the probe states once, then measures AED from the agents' answers on them.

    It needs two things from the run: `answer`, a function that puts the probe states to every
    agent in one batch and returns the completions as [probe][asset][agent] (the model's
    `answer_probes`), and the run's store, to read back the previous measurement."""

    def __init__(self, config: AEDConfig, run_dates: list[pd.Timestamp], store: RunStore):
        self.config, self.store = config, store
        picks = np.linspace(0, len(run_dates) - 1, num=min(config.probes, len(run_dates))).round().astype(int)
        self.probe_steps = sorted({int(i) for i in picks})
        self.probe_dates = [run_dates[i] for i in self.probe_steps]
        self._embedder = None

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = load_embedder(self.config.embedder)
        return self._embedder

    def answers(self, answer: Answer) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """Every agent's expected decision, sampled decision and greedy belief on every probe and
        asset: shapes (K, N), (K, N) and K x N, K = probes x assets."""
        expected, sampled, beliefs = [], [], []
        for per_asset in answer(list(zip(self.probe_steps, self.probe_dates))):
            for rows in per_asset:
                expected.append([c.expected_decision if c.expected_decision is not None else c.decision_depth for c in rows])  # a remote model may give no distribution
                sampled.append([c.decision_depth for c in rows])
                beliefs.append([c.belief for c in rows])
        return np.array(expected, dtype=float), np.array(sampled, dtype=float), beliefs

    def measure(self, answer: Answer, phase: int, step: int) -> AEDMeasurement:
        expected, sampled, beliefs = self.answers(answer)
        previous = self._previous(phase)
        result = measure_aed(phase, step, expected, embed_beliefs(self.embedder, beliefs), previous)
        return AEDMeasurement(result, beliefs, self.embedder.name, sampled)

    def _previous(self, phase: int) -> AEDResult | None:
        """The last measurement before `phase`, rebuilt from the aed_probes table."""
        store = self.store
        earlier = store.query("SELECT max(phase) AS phase FROM aed WHERE phase < ?", [phase])["phase"]
        if not len(earlier) or pd.isna(earlier.iloc[0]):
            return None
        last = int(earlier.iloc[0])
        rows = store.query("SELECT probe, agent_id, belief, expected_decision FROM aed_probes WHERE phase = ? ORDER BY probe, agent_id", [last])
        n_probes, n_agents = rows["probe"].nunique(), rows["agent_id"].nunique()
        decisions = rows["expected_decision"].to_numpy().reshape(n_probes, n_agents)
        beliefs = rows["belief"].fillna("").to_numpy().reshape(n_probes, n_agents).tolist()
        step = int(store.scalar("SELECT step FROM aed WHERE phase = ?", [last]))
        return measure_aed(last, step, decisions, embed_beliefs(self.embedder, beliefs))
