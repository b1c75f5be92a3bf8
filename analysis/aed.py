"""AED, Agent Expectation Dispersion: how different the agents' beliefs and decisions are.

AED is measured on a fixed probe set of K market states, each answered by all N agents with the
environment frozen and decoding fixed, so that a change in AED is a change in the agents:

- `AED_decision`: Gini's mean difference of the N decisions, divided by 20 (the width of
  [-10, 10]) so it lies in [0, 1], averaged over probes;
- `AED_belief`: the mean pairwise cosine distance `1 - cos(e_i, e_j)` of the belief embeddings,
  averaged over probes (0 = identical beliefs, about 1 = unrelated ones);
- per agent, the drift since the previous measurement, on the same probes.

This module is plain numpy. Embedding the belief texts is `analysis.embeddings`; the simulation
decides when to measure (phase 0, then after every training phase) and stores `aed_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DECISION_RANGE = 20.0  # width of [-10, 10], in decision_depth units


def decision_dispersion(decisions: np.ndarray) -> float:
    """AED_decision of a (K probes, N agents) array of decision_depth, in [0, 1]."""
    decisions = np.asarray(decisions, dtype=float)
    _, n_agents = decisions.shape
    if n_agents < 2:
        return 0.0
    pair_gaps = np.abs(decisions[:, :, None] - decisions[:, None, :])  # (K, N, N), 0 on i == j
    per_probe = pair_gaps.sum(axis=(1, 2)) / (n_agents * (n_agents - 1)) / DECISION_RANGE
    return float(per_probe.mean())


def belief_dispersion(embeddings: np.ndarray) -> float:
    """AED_belief of a (K probes, N agents, D) array of belief embeddings."""
    unit = _unit(embeddings)
    _, n_agents, _ = unit.shape
    if n_agents < 2:
        return 0.0
    cosine = np.einsum("knd,kmd->knm", unit, unit)
    upper = np.triu_indices(n_agents, k=1)
    return float(_cosine_distance(cosine[:, upper[0], upper[1]]).mean())


def decision_drift(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Per agent, the mean over probes of |d_now - d_before|, in decision_depth units: (N,)."""
    gaps = np.abs(np.asarray(current, dtype=float) - np.asarray(previous, dtype=float))
    return gaps.mean(axis=0)


def belief_drift(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Per agent, the mean over probes of the cosine distance to its earlier belief: (N,)."""
    cosine = (_unit(previous) * _unit(current)).sum(axis=-1)  # (K, N)
    return _cosine_distance(cosine).mean(axis=0)


@dataclass(frozen=True)
class AEDResult:
    """One AED measurement. Keep it: the next measurement takes it as `previous` for drift."""

    phase: int  # 0 = before the first training phase, k = after the k-th
    step: int  # the last trading step before the measurement
    decisions: np.ndarray  # (K, N) decision_depth on the probes
    embeddings: np.ndarray  # (K, N, D) belief embeddings on the probes
    aed_decision: float
    aed_belief: float
    mean_decision: np.ndarray  # (N,) mean decision_depth over probes
    decision_drift: np.ndarray | None  # (N,) since `previous`; None at the first measurement
    belief_drift: np.ndarray | None  # (N,) likewise


def measure_aed(
    phase: int,
    step: int,
    decisions: np.ndarray,
    embeddings: np.ndarray,
    previous: AEDResult | None = None,
) -> AEDResult:
    """Measure AED on the probe answers; drift is taken against `previous` (same probes, agents)."""
    decisions = np.asarray(decisions, dtype=float)
    embeddings = np.asarray(embeddings, dtype=float)
    return AEDResult(
        phase=phase,
        step=step,
        decisions=decisions,
        embeddings=embeddings,
        aed_decision=decision_dispersion(decisions),
        aed_belief=belief_dispersion(embeddings),
        mean_decision=decisions.mean(axis=0),
        decision_drift=None if previous is None else decision_drift(previous.decisions, decisions),
        belief_drift=None if previous is None else belief_drift(previous.embeddings, embeddings),
    )


def aed_rows(
    result: AEDResult, beliefs: Sequence[Sequence[str]], embedder: str, sampled: np.ndarray | None = None
) -> dict[str, list[dict]]:
    """Rows for the tables `aed`, `aed_agents` and `aed_probes`, keyed by column name.

    `beliefs[k][i]` is agent i's belief text on probe k; `result.decisions` are the decisions AED
    measured (the simulation passes each agent's exact expected decision) and `sampled`, if
    given, one sampled decision per probe and agent. Drift is None (SQL NULL) at the first
    measurement.
    """
    n_probes, n_agents = result.decisions.shape
    agents = range(n_agents)
    return {
        "aed": [
            {
                "phase": result.phase,
                "step": result.step,
                "n_probes": n_probes,
                "n_agents": n_agents,
                "aed_decision": result.aed_decision,
                "aed_belief": result.aed_belief,
                "embedder": embedder,
            }
        ],
        "aed_agents": [
            {
                "phase": result.phase,
                "agent_id": agent,
                "mean_decision": float(result.mean_decision[agent]),
                "decision_drift": _item(result.decision_drift, agent),
                "belief_drift": _item(result.belief_drift, agent),
            }
            for agent in agents
        ],
        "aed_probes": [
            {
                "phase": result.phase,
                "probe": probe,
                "agent_id": agent,
                "belief": beliefs[probe][agent],
                "decision_depth": None if sampled is None else float(sampled[probe, agent]),
                "expected_decision": float(result.decisions[probe, agent]),
            }
            for probe in range(n_probes)
            for agent in agents
        ],
    }


def _cosine_distance(cosine: np.ndarray) -> np.ndarray:
    """1 - cosine, kept in [0, 2]: identical beliefs can round to a cosine of 1 + 2e-16."""
    return np.clip(1.0 - cosine, 0.0, 2.0)


def _unit(embeddings: np.ndarray) -> np.ndarray:
    """Embeddings scaled to length 1 along the last axis (a no-op for normalised ones)."""
    embeddings = np.asarray(embeddings, dtype=float)
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)


def _item(values: np.ndarray | None, index: int) -> float | None:
    return None if values is None else float(values[index])
