"""Measuring AED during a run: the agents answer a fixed probe set, with the environment frozen.

The probe set is K dates spread evenly over the run's dates (times each asset), fixed for the
whole run. At a measurement every agent sees each probe state as it would have then (its own
categories, the data's fundamental price, no news, no memory) and answers greedily, with its
current adapter. AED's decision dispersion is taken over each agent's exact expected decision
after its greedy belief, at its own temperature (a greedy answer reads only the distribution's
mode, which barely moves); the sampled decision is stored beside it. Decisions and belief
embeddings go to `analysis.aed`; drift is taken against the
previous measurement, which is read back from the database so a resumed run measures the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.aed import AEDResult, aed_rows, measure_aed
from analysis.embeddings import embed_beliefs, load_embedder
from simulation.config import AEDConfig


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
    def __init__(self, config: AEDConfig, run_dates: list[pd.Timestamp]):
        self.config = config
        picks = np.linspace(0, len(run_dates) - 1, num=min(config.probes, len(run_dates))).round().astype(int)
        self.probe_steps = sorted(set(int(i) for i in picks))
        self.probe_dates = [run_dates[i] for i in self.probe_steps]
        self._embedder = None

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = load_embedder(self.config.embedder)
        return self._embedder

    def answers(self, model) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """Every agent's expected decision, sampled decision and greedy belief on every probe:
        shapes (K, N), (K, N) and K x N.

        All probes go through the model as one batch (greedy, so the step passed for seeding is
        immaterial); rows are then split back per probe and asset."""
        per_probe = []
        for probe_step, date in zip(self.probe_steps, self.probe_dates):
            prices = {asset: float(model.fundamental.loc[date, asset]) for asset in model.assets}
            per_probe.append(model.gather_factors(probe_step, date, news={}, use_memory=False, prices=prices))
        completions = model.deliberate(self.probe_steps[0], [o for observations in per_probe for o in observations], greedy=True, seed_key="aed")
        expected, sampled, beliefs, start = [], [], [], 0
        for observations in per_probe:
            probe_completions, start = completions[start:start + len(observations)], start + len(observations)
            for asset in model.assets:
                rows = [c for o, c in zip(observations, probe_completions) if o.asset == asset]
                expected.append([c.expected_decision for c in rows])
                sampled.append([c.decision_depth for c in rows])
                beliefs.append([c.belief for c in rows])
        return np.array(expected, dtype=float), np.array(sampled, dtype=float), beliefs

    def measure(self, model, phase: int, step: int) -> AEDMeasurement:
        expected, sampled, beliefs = self.answers(model)
        previous = self._previous(model.store, phase)
        result = measure_aed(phase, step, expected, embed_beliefs(self.embedder, beliefs), previous)
        return AEDMeasurement(result, beliefs, self.embedder.name, sampled)

    def _previous(self, store, phase: int) -> AEDResult | None:
        """The last measurement before `phase`, rebuilt from the aed_probes table."""
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
