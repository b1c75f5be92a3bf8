"""AED: decision and belief dispersion, drift, the stored rows, and the belief embedder."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis.aed import (
    aed_rows,
    belief_dispersion,
    belief_drift,
    decision_dispersion,
    decision_drift,
    measure_aed,
)
from analysis.embeddings import embed_beliefs, load_embedder
from core.errors import ModelPathError


def test_decision_dispersion_is_zero_for_identical_agents():
    assert decision_dispersion(np.full((4, 5), 7.5)) == 0.0


def test_decision_dispersion_matches_hand_computation():
    # Probe 1: decisions -10, 0, 10. Ordered pairs i != j: |-10-0| = 10, |-10-10| = 20,
    #   |0-10| = 10, each twice: sum 80; / (N(N-1) = 6) = 13.33; / 20 = 2/3.
    # Probe 2: decisions 2, 2, 5. Gaps 0, 3, 3, each twice: sum 12; / 6 = 2; / 20 = 0.1.
    # Mean over the two probes: (2/3 + 0.1) / 2 = 0.38333...
    decisions = np.array([[-10.0, 0.0, 10.0], [2.0, 2.0, 5.0]])
    assert decision_dispersion(decisions) == pytest.approx((2 / 3 + 0.1) / 2)


def test_decision_dispersion_rises_with_the_spread_of_decisions():
    spreads = [0.0, 0.5, 1.0, 2.0, 5.0, 10.0]
    values = [decision_dispersion(np.tile(s * np.linspace(-1, 1, 6), (3, 1))) for s in spreads]
    assert values[0] == 0.0
    assert all(later > earlier for earlier, later in itertools.pairwise(values))
    assert decision_dispersion(np.array([[-10.0, 10.0]])) == 1.0  # the maximum


def test_decision_dispersion_of_fewer_than_two_agents_is_zero():
    assert decision_dispersion(np.array([[3.0], [-4.0]])) == 0.0


def test_belief_dispersion_is_zero_for_identical_and_one_for_orthogonal_beliefs():
    same = np.tile(np.array([0.6, 0.8, 0.0]), (2, 4, 1))
    assert belief_dispersion(same) == pytest.approx(0.0, abs=1e-12)
    orthogonal = np.eye(3)[None]  # 1 probe, 3 agents, each on its own axis
    assert belief_dispersion(orthogonal) == pytest.approx(1.0)


def test_identical_beliefs_never_give_a_negative_distance():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(256, 384))
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    rounded_up = vectors[(unit * unit).sum(axis=-1) > 1.0]  # a belief's cosine with itself is 1 + 2e-16
    assert len(rounded_up) > 0
    same = np.repeat(rounded_up[:, None, :], 3, axis=1)  # every probe: 3 agents with one belief
    assert np.all(belief_drift(same, same) == 0.0)  # 1 - cosine would be -2e-16 for every agent
    assert 0.0 <= belief_dispersion(same) < 1e-15


def test_belief_dispersion_ignores_embedding_length():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(3, 4, 8))
    scaled = embeddings * rng.uniform(0.5, 5.0, size=(3, 4, 1))
    assert belief_dispersion(scaled) == pytest.approx(belief_dispersion(embeddings))


def test_drift_is_per_agent_mean_change_over_probes():
    before = np.array([[0.0, 5.0], [2.0, 5.0]])
    after = np.array([[4.0, 5.0], [0.0, 5.0]])
    # agent 0 moves 4 then 2: mean 3; agent 1 does not move
    np.testing.assert_allclose(decision_drift(before, after), [3.0, 0.0])
    beliefs_before = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    beliefs_after = np.array(
        [[[0.0, 1.0], [2.0, 0.0]]]
    )  # agent 0 turns 90 degrees, agent 1 only grows
    np.testing.assert_allclose(belief_drift(beliefs_before, beliefs_after), [1.0, 0.0], atol=1e-12)


def test_measure_aed_has_drift_only_against_a_previous_measurement():
    rng = np.random.default_rng(1)
    first = measure_aed(0, 9, rng.uniform(-10, 10, (3, 4)), rng.normal(size=(3, 4, 5)))
    assert first.decision_drift is None and first.belief_drift is None
    np.testing.assert_allclose(first.mean_decision, first.decisions.mean(axis=0))
    second = measure_aed(1, 9, first.decisions + 1.0, first.embeddings, previous=first)
    np.testing.assert_allclose(second.decision_drift, np.ones(4))
    np.testing.assert_allclose(second.belief_drift, np.zeros(4), atol=1e-12)
    assert second.aed_decision == pytest.approx(
        first.aed_decision
    )  # a common shift keeps the spread


def test_aed_rows_fill_the_three_schema_tables():
    first = measure_aed(
        0, 9, np.array([[1.0, -1.0], [2.0, 0.0], [0.0, 0.0]]), np.eye(2)[None].repeat(3, 0)
    )
    beliefs = [["up", "down"], ["up", ""], ["flat", "flat"]]
    sampled = np.array([[2.0, -1.5], [1.0, 0.5], [0.0, 0.0]])
    rows = aed_rows(first, beliefs, "all-MiniLM-L6-v2", sampled)
    assert rows["aed"] == [
        {
            "phase": 0,
            "step": 9,
            "n_probes": 3,
            "n_agents": 2,
            "aed_decision": first.aed_decision,
            "aed_belief": 1.0,
            "embedder": "all-MiniLM-L6-v2",
        }
    ]
    assert [row["agent_id"] for row in rows["aed_agents"]] == [0, 1]
    assert all(
        row["decision_drift"] is None and row["belief_drift"] is None for row in rows["aed_agents"]
    )
    assert len(rows["aed_probes"]) == 6
    assert rows["aed_probes"][3] == {
        "phase": 0,
        "probe": 1,
        "agent_id": 1,
        "belief": "",
        "decision_depth": 0.5,      # the sampled decision
        "expected_decision": 0.0,   # what AED measured
    }


def test_missing_embedder_folder_is_a_model_path_error(tmp_path):
    with pytest.raises(ModelPathError, match="aed.embedder"):
        load_embedder(tmp_path / "no-such-model")


def test_default_embedder_embeds_beliefs_including_empty_ones():
    embedder = load_embedder()
    beliefs = [
        ["Prices will rise: momentum is strong.", "The market will go up on strong momentum.", ""],
        ["I expect a sharp fall.", "Recipes for apple pie.", "Stocks look overvalued."],
    ]
    embeddings = embed_beliefs(embedder, beliefs)
    assert embeddings.shape == (2, 3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
    similar = embeddings[0, 0] @ embeddings[0, 1]
    unrelated = embeddings[0, 0] @ embeddings[1, 1]
    assert similar > unrelated + 0.3
    assert 0.0 < belief_dispersion(embeddings) < 1.0


def test_the_meter_asks_every_probe_at_once_and_reads_expected_decisions_per_probe_asset_and_agent():
    from types import SimpleNamespace

    import pandas as pd

    from simulation.aed_meter import AEDMeter
    from simulation.scenario import AEDConfig

    dates = list(pd.date_range("2020-01-01", periods=9, freq="D"))
    calls = []

    def answer(probes):
        """Stands in for the model: two assets, two agents, decisions that encode the probe."""
        calls.append(probes)
        return [[[SimpleNamespace(expected_decision=step + agent / 10, decision_depth=-step, belief=f"{asset}{agent}@{step}") for agent in (0, 1)]
                 for asset in ("A", "B")] for step, _ in probes]

    meter = AEDMeter(AEDConfig(probes=3), dates, store=None)
    decisions, sampled, beliefs = meter.answers(answer)
    assert calls == [[(0, dates[0]), (4, dates[4]), (8, dates[8])]]  # one call with every probe state
    assert decisions.tolist() == [[t, t + 0.1] for t in (0, 4, 8) for _ in ("A", "B")]  # AED reads the expected decisions
    assert sampled.tolist() == [[-t, -t] for t in (0, 4, 8) for _ in ("A", "B")]
    assert beliefs[3] == ["B0@4", "B1@4"]
