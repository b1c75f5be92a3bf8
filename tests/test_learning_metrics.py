"""Learning metrics on a hand-made run: 3 agents, 4 steps, one training phase after step 1."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from run_databases import insert_frame

from analysis.learning import (
    cumulative_reward_by_group,
    learning_metrics,
    load_decisions,
)
from core.store import SCHEMA

RETURNS = [0.01, -0.02, 0.03, -0.01]
DECISIONS = {  # agent_id -> (group, decision_depth at steps 0..3)
    0: ("bulls", [5.0, 5.0, 0.0, -2.0]),  # rewards 0.05, -0.10, 0, 0.02: sum -0.03
    1: ("bears", [-4.0, -4.0, -4.0, -4.0]),  # rewards -0.04, 0.08, -0.12, 0.04: sum -0.04
    2: ("bears", [-1.0, -1.0, -1.0, -1.0]),  # rewards -0.01, 0.02, -0.03, 0.01: sum -0.01
}


def tiny_run(training_step: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(SCHEMA)
    insert_frame(
        con,
        "agents",
        pd.DataFrame(
            [{"agent_id": agent, "group_name": group} for agent, (group, _) in DECISIONS.items()]
        ),
    )
    insert_frame(
        con,
        "decisions",
        pd.DataFrame(
            [
                {
                    "step": step,
                    "agent_id": agent,
                    "asset": "SPX",
                    "decision_depth": depth,
                    "expected_decision": depth / 2 + step,
                    "realised_return": RETURNS[step],
                    "reward": RETURNS[step] * depth,
                }
                for agent, (_, depths) in DECISIONS.items()
                for step, depth in enumerate(depths)
            ]
        ),
    )
    if training_step is not None:
        insert_frame(
            con,
            "training",
            pd.DataFrame(
                [{"phase": 1, "step": training_step, "agent_id": agent} for agent in DECISIONS]
            ),
        )
    return con


@pytest.fixture
def decisions() -> pd.DataFrame:
    return load_decisions(tiny_run(training_step=1))


def test_agent_metrics_over_the_whole_run(decisions):
    metrics = learning_metrics(decisions).set_index("agent_id")
    np.testing.assert_allclose(metrics["cumulative_reward"], [-0.03, -0.04, -0.01], atol=1e-12)
    # agent 0: the 0 at step 2 is left out; steps 0 and 3 hit, step 1 misses: 2/3.
    # agents 1 and 2 always sell: they hit on the falls at steps 1 and 3: 2/4.
    np.testing.assert_allclose(metrics["hit_rate"], [2 / 3, 0.5, 0.5])
    expected_corr = np.corrcoef(DECISIONS[0][1], RETURNS)[0, 1]
    assert metrics.loc[0, "decision_return_corr"] == pytest.approx(expected_corr)
    expected_mean = np.array(DECISIONS[0][1]) / 2 + np.arange(4)
    assert metrics.loc[0, "expected_return_corr"] == pytest.approx(np.corrcoef(expected_mean, RETURNS)[0, 1])
    assert np.isnan(
        metrics.loc[1, "decision_return_corr"]
    )  # a constant decision has no correlation


def test_phase_windows_split_at_the_training_step(decisions):
    metrics = learning_metrics(decisions, by_phase=True).set_index(["phase", "agent_id"])
    assert metrics.loc[(0, 0), ["first_step", "last_step"]].tolist() == [0, 1]
    assert metrics.loc[(1, 0), ["first_step", "last_step"]].tolist() == [2, 3]
    assert metrics.loc[(0, 0), "cumulative_reward"] == pytest.approx(0.05 - 0.10)
    assert metrics.loc[(1, 0), "cumulative_reward"] == pytest.approx(0.02)
    assert metrics.loc[(0, 0), "hit_rate"] == 0.5
    assert metrics.loc[(1, 0), "hit_rate"] == 1.0  # step 2 (decision 0) is left out


def test_group_metrics_read_as_the_groups_average_agent(decisions):
    metrics = learning_metrics(decisions, level="group").set_index("group_name")
    assert metrics.loc["bears", "agents"] == 2
    assert metrics.loc["bears", "decisions"] == 8
    assert metrics.loc["bears", "cumulative_reward"] == pytest.approx((-0.04 - 0.01) / 2)
    assert metrics.loc["bears", "hit_rate"] == 0.5
    assert metrics.loc["bulls", "cumulative_reward"] == pytest.approx(-0.03)


def test_a_run_without_training_is_one_window():
    decisions = load_decisions(tiny_run(training_step=None))
    assert set(decisions["phase"]) == {0}
    metrics = learning_metrics(decisions, level="group", by_phase=True)
    assert metrics["phase"].tolist() == [0, 0]


def test_cumulative_reward_curve_by_group(decisions):
    curve = cumulative_reward_by_group(decisions).set_index(["step", "group_name"])[
        "cumulative_reward"
    ]
    assert curve[(0, "bulls")] == pytest.approx(0.05)
    assert curve[(0, "bears")] == pytest.approx((-0.04 - 0.01) / 2)
    assert curve[(3, "bulls")] == pytest.approx(-0.03)
    assert curve[(3, "bears")] == pytest.approx(-0.025)
