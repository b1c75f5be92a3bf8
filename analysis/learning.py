"""Did the agents learn? Reward, hit rate and decision/return correlation, per agent or group.

Each decision is assigned to a training-phase window: phase 0 holds the steps up to and including
the first phase's `step` (the last step before it), phase k the steps after the k-th phase's step.
A run with no training rows is one window, phase 0. Metrics:
- `cumulative_reward`: the summed reward, divided by the number of agents in the row (so a group
  reads as its average agent and is comparable to a single agent);
- `hit_rate`: share of decisions whose sign matches the realised return's sign; decisions of 0
  are left out (they bet nothing), a realised return of exactly 0 counts as a miss;
- `decision_return_corr`: Pearson correlation of decision_depth with realised_return.
Several assets are pooled: each (step, agent, asset) decision is one observation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pandas as pd

from analysis.rundb import has_rows, open_run_db

LEVEL_KEYS = {"agent": ["agent_id", "group_name"], "group": ["group_name"]}
METRICS = [
    "first_step",
    "last_step",
    "agents",
    "decisions",
    "cumulative_reward",
    "mean_reward",
    "hit_rate",
    "decision_return_corr",
    "expected_return_corr",
]


def load_decisions(db: str | Path | duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every decision with its agent's group and its training-phase window (`phase`)."""
    with open_run_db(db) as con:
        decisions = con.execute(
            """
            SELECT d.step, d.agent_id, a.group_name, d.asset,
                   d.decision_depth, d.expected_decision, d.realised_return, d.reward
            FROM decisions d JOIN agents a USING (agent_id)
            ORDER BY d.step, d.agent_id, d.asset
            """
        ).df()
        boundaries = training_steps(con)
    decisions["phase"] = np.searchsorted(boundaries, decisions["step"].to_numpy(), side="left")
    return decisions


def training_steps(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """The `step` of each training phase, in phase order (empty if the run has not trained)."""
    if not has_rows(con, "training"):
        return np.array([], dtype=int)
    return (
        con.execute("SELECT min(step) FROM training GROUP BY phase ORDER BY phase")
        .df()
        .iloc[:, 0]
        .to_numpy()
    )


def learning_metrics(
    decisions: pd.DataFrame, level: Literal["agent", "group"] = "agent", by_phase: bool = False
) -> pd.DataFrame:
    """One row per agent (or group), or per phase window and agent (or group) with `by_phase`."""
    keys = (["phase"] if by_phase else []) + LEVEL_KEYS[level]
    records = [
        {**dict(zip(keys, key, strict=True)), **_metrics(rows)}
        for key, rows in decisions.groupby(keys, sort=True)
    ]
    return pd.DataFrame(records, columns=keys + METRICS)


def cumulative_reward_by_group(decisions: pd.DataFrame) -> pd.DataFrame:
    """Per step and group, the mean over the group's agents of each agent's reward so far
    (summed over assets)."""
    per_agent = decisions.pivot_table(
        index="step", columns="agent_id", values="reward", aggfunc="sum", fill_value=0.0
    ).cumsum()
    groups = decisions.drop_duplicates("agent_id").set_index("agent_id")["group_name"]
    by_group = per_agent.T.groupby(groups).mean().T
    return by_group.reset_index().melt(
        id_vars="step", var_name="group_name", value_name="cumulative_reward"
    )


def _metrics(rows: pd.DataFrame) -> dict:
    directional = rows[rows["decision_depth"] != 0]
    hits = np.sign(directional["decision_depth"]) == np.sign(directional["realised_return"])
    n_agents = rows["agent_id"].nunique()
    return {
        "first_step": int(rows["step"].min()),
        "last_step": int(rows["step"].max()),
        "agents": n_agents,
        "decisions": len(rows),
        "cumulative_reward": rows["reward"].sum() / n_agents,
        "mean_reward": rows["reward"].mean(),
        "hit_rate": hits.mean() if len(directional) else np.nan,
        "decision_return_corr": rows["decision_depth"].corr(rows["realised_return"]),
        "expected_return_corr": rows["expected_decision"].corr(rows["realised_return"]),  # E[d]: free of the draw's noise
    }
