"""The real SmolLM2-135M-Instruct (the packaged GGUF) through the whole engine.

These load the real model (about 25 s the first time on 2 cores, then ~1 s from the cache) and
run a few steps, so they are marked slow; CI runs them.
"""

from __future__ import annotations

import duckdb
import pytest
from helpers import write_scenario

from agents.llm import LLM, resolve_source
from simulation.run import start

pytestmark = pytest.mark.slow


def test_packaged_model_resolves_to_the_gguf_in_the_wheel():
    source = resolve_source("packaged")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.model_id.startswith("packaged:")


def test_real_model_runs_a_tiny_scenario_end_to_end_with_training_and_aed(tmp_path):
    scenario = write_scenario(tmp_path, f"""
        [run]
        name = "real"
        seed = 5
        steps = 4
        output_dir = "{tmp_path / 'runs'}"

        [data.synthetic]
        n_days = 20

        [[agents.groups]]
        name = "chartists"
        count = 1
        categories = ["technical"]

        [[agents.groups]]
        name = "fundamentalists"
        count = 1
        categories = ["fundamental"]

        [model]
        path = "packaged"
        belief_tokens = 12

        [training]
        every = 2
        max_samples = 2

        [aed]
        probes = 2
        """)
    result = start(str(scenario), plain=True)
    con = duckdb.connect(str(result.database), read_only=True)
    model_id, sha = con.execute("SELECT model_id, model_sha256 FROM run").fetchall()[0]
    decisions = con.execute("SELECT decision_depth, fallback, belief FROM decisions").fetchall()
    phases = con.execute("SELECT count(DISTINCT phase) FROM training").fetchall()[0][0]
    aed = con.execute("SELECT count(*) FROM aed").fetchall()[0][0]
    con.close()
    assert result.status == "completed" and model_id.startswith("packaged:") and len(sha) == 64
    assert len(decisions) == 8
    assert all(-10 <= depth <= 10 and not fallback for depth, fallback, _ in decisions)
    assert sum(len(belief.split()) >= 3 for *_, belief in decisions) >= 6  # the real model writes words
    assert phases == 2 and aed == 3


def test_real_model_beliefs_are_english_text():
    llm = LLM.load("packaged")
    prompt = llm.chat_prompt("You are a balanced investor.", "SYN0 price 101.20.\nTechnical factors: momentum_5d=+1.20.\nIn one sentence, state your belief about SYN0's return tomorrow.")
    completions = llm.generate([prompt] * 3, [0.0, 0.7, 0.7], belief_tokens=24, seed=1)
    assert all(completion.fallback_reason is None for completion in completions)
    words = [sum(word.isalpha() for word in completion.belief.split()) for completion in completions]
    assert min(words) >= 1 and sum(words) >= 8, words  # words, not echoed numbers
