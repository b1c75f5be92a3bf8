"""A small synthetic run database with the run store's schema, for the analysis tests.

Two groups of two agents trade one asset: "trend" agents buy after a rise, "contrarian" agents
sell after one. Training and AED rows are optional, to test runs that have not trained yet.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from analysis.aed import aed_rows, measure_aed
from core.store import SCHEMA

GROUPS = {"trend": [0, 1], "contrarian": [2, 3]}
ASSET = "SPX"


def make_run_db(
    path: Path,
    name: str = "run A",
    steps: int = 40,
    phase_step: int | None = 19,
    with_aed: bool = True,
    seed: int = 0,
) -> Path:
    """Write a finished run of `steps` steps; a training phase after `phase_step` unless None."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    con.execute(SCHEMA)
    con.execute(
        "INSERT INTO run VALUES (?, ?, 'scenarios/test.toml', '', '[]', ?, 'tiny-llama', 'abc', 'cpu',"
        " 'float32', '{}', 'completed', NULL, ?, TIMESTAMP '2024-01-01 00:00:00',"
        " TIMESTAMP '2024-01-01 00:01:00', 60.0, '{\"backend\": \"transformers\"}')",
        [f"{name}-1", name, seed, steps],
    )
    group_of = {agent: group for group, agents in GROUPS.items() for agent in agents}
    insert_frame(
        con,
        "agents",
        pd.DataFrame(
            [
                {
                    "agent_id": a,
                    "group_name": g,
                    "visible_categories": ["technical"],
                    "optimism": 0.5,
                    "rationality": 0.5,
                    "risk_preference": 0.5,
                    "temperature": 0.7,
                    "memory_length": 5,
                    "seed": a,
                }
                for a, g in group_of.items()
            ]
        ),
    )
    returns = rng.normal(0.0, 0.01, steps)
    fundamental = rng.normal(0.0, 0.01, steps)
    prices = 100.0 * np.cumprod(np.r_[1.0, 1.0 + returns])
    dates = pd.bdate_range("2020-01-01", periods=steps)
    depths = np.zeros((steps, len(group_of)))
    decision_rows = []
    for step in range(steps):
        last_return = returns[step - 1] if step else 0.0
        for agent, group in group_of.items():
            direction = 1.0 if group == "trend" else -1.0
            depth = float(np.clip(direction * 500 * last_return + rng.normal(0, 1), -10, 10))
            depths[step, agent] = depth = 0.0 if agent == 1 and step % 5 == 0 else round(depth, 1)
            decision_rows.append(
                {
                    "step": step,
                    "date": dates[step],
                    "agent_id": agent,
                    "asset": ASSET,
                    "prompt": "prompt",
                    "belief": f"{group} belief of agent {agent} at step {step}.",
                    "completion": "",
                    "decision_depth": depth,
                    "fallback": step == 3 and agent == 0,
                    "prompt_tokens": 100,
                    "completion_tokens": 20,
                    "latency_s": 0.1,
                    "adapter_version": int(phase_step is not None and step > phase_step),
                    "realised_return": returns[step],
                    "reward": returns[step] * depth,
                    "position": depth / 10,
                    "wealth": 1.0,
                }
            )
    insert_frame(con, "decisions", pd.DataFrame(decision_rows))
    insert_frame(
        con,
        "market",
        pd.DataFrame(
            {
                "step": range(steps),
                "date": dates,
                "asset": ASSET,
                "price": prices[:-1],
                "next_price": prices[1:],
                "return": returns,
                "fundamental_price": 100.0 * np.cumprod(np.r_[1.0, 1.0 + fundamental])[:-1],
                "fundamental_return": fundamental,
                "net_demand": depths.mean(axis=1) / 10,
                "volume": np.abs(depths).mean(axis=1) / 10,
                "impact": 0.5,
                "shock": 0.0,
            }
        ),
    )
    if phase_step is not None:
        insert_frame(
            con,
            "training",
            pd.DataFrame(
                [
                    {
                        "phase": 1,
                        "step": phase_step,
                        "agent_id": a,
                        "samples": phase_step + 1,
                        "loss": 0.5 + 0.1 * a,
                        "epochs": 2,
                        "kept_epoch": 1,
                        "heldout_pay_before": 0.01,
                        "heldout_pay_after": 0.02 + 0.01 * a,
                        "decision_kl": 0.01,
                        "reward_mean": 0.001,
                        "reward_std": 0.01,
                        "grad_norm": 1.0,
                        "seconds": 2.0,
                        "adapter_path": f"adapters/{a}",
                        "adapter_version": 1,
                        "belief_kl": 0.02,
                        "belief_text_share": 1.0,
                    }
                    for a in group_of
                ]
            ),
        )
    if with_aed:
        phases = [(0, -1)] + ([(1, phase_step)] if phase_step is not None else [])
        previous = None
        for phase, step in phases:
            decisions_on_probes = rng.uniform(-10, 10, (3, len(group_of)))
            embeddings = rng.normal(size=(3, len(group_of), 8))
            previous = measure_aed(phase, step, decisions_on_probes, embeddings, previous)
            beliefs = [[f"probe {k} belief {a}" for a in group_of] for k in range(3)]
            for table, rows in aed_rows(previous, beliefs, "all-MiniLM-L6-v2").items():
                insert_frame(con, table, pd.DataFrame(rows))
    con.close()
    return path


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Append the frame's rows to the table, matching columns by name."""
    if frame.empty:
        return
    con.register("frame", frame)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")
    con.unregister("frame")
