"""Training phases and AED inside a run (tiny model): recorded, versioned, reloadable, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from helpers import crash_then_resume, tiny_scenario

from analysis.compare import compare_runs
from simulation.model import MarketModel
from simulation.run import start


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("learning")
    result = start(str(tiny_scenario(folder, tiny_model_dir, steps=6, every=3, training=True, aed=True, impact=0.01)), plain=True)
    con = duckdb.connect(str(result.database), read_only=True)
    yield result, con
    con.close()


def test_every_phase_trains_every_agent_and_saves_its_adapter(learning_run):
    _result, con = learning_run
    rows = con.execute("SELECT phase, agent_id, samples, adapter_path, adapter_version FROM training ORDER BY phase, agent_id").fetchall()
    assert [(phase, agent) for phase, agent, *_ in rows] == [(p, a) for p in (1, 2) for a in range(5)]
    for phase, agent, samples, path, version in rows:
        assert samples == 3 * phase and version == phase  # a phase learns from every decision so far (max_samples 20)
        assert (Path(path) / "adapter_config.json").is_file() and (Path(path) / "adapter_model.safetensors").is_file()


def test_the_run_records_what_computed_its_decoding_steps_lora_term(learning_run):
    """The kernel and bmm paths sum in another order (and read other copies of the weights), so a seeded
    run's beliefs reproduce exactly only on the same path: the run says which it took."""
    from agents.lora_kernel import decoding_kernel

    _, con = learning_run
    backend = json.loads(con.execute("SELECT backend FROM run").fetchone()[0])
    assert backend == {"backend": "transformers", "lora_decoding": "kernel" if decoding_kernel() is not None else "bmm"}


def test_decisions_record_the_adapter_version_they_were_made_with(learning_run):
    _, con = learning_run
    versions = dict(con.execute("SELECT step, max(adapter_version) FROM decisions GROUP BY step").fetchall())
    assert versions == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1}


def test_aed_is_measured_before_training_and_after_every_phase(learning_run):
    _, con = learning_run
    aed = con.execute("SELECT phase, n_probes, n_agents, aed_decision, aed_belief FROM aed ORDER BY phase").fetchall()
    assert [row[0] for row in aed] == [0, 1, 2]
    for phase, probes, agents, decision, belief in aed:
        assert probes == 2 and agents == 5 and 0.0 <= belief <= 2.0
        expected = con.execute("""SELECT avg(abs(a.expected_decision - b.expected_decision)) / 20 FROM aed_probes a JOIN aed_probes b
                                  USING (phase, probe) WHERE phase = ? AND a.agent_id != b.agent_id""", [phase]).fetchall()[0][0]
        assert decision == pytest.approx(expected)  # Gini's mean difference of the expected decisions, over the 5 * 4 ordered pairs
    assert aed[0][3] > 0  # the groups read different factors at different temperatures: their expected decisions differ
    drift = con.execute("SELECT phase, count(decision_drift) FROM aed_agents GROUP BY phase ORDER BY phase").fetchall()
    assert drift == [(0, 0), (1, 5), (2, 5)]  # no drift before the first measurement
    assert con.execute("SELECT count(*) FROM aed_probes").fetchall()[0][0] == 3 * 2 * 5


def test_a_saved_adapter_reloads_with_peft(learning_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, con = learning_run
    path = con.execute("SELECT adapter_path FROM training WHERE phase = 2 AND agent_id = 1").fetchall()[0][0]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path)
    assert any("lora_B" in name and parameter.abs().sum() > 0 for name, parameter in model.named_parameters())


def test_resume_after_a_crash_inside_a_training_phase_equals_the_uninterrupted_run(learning_run, tmp_path, tiny_model_dir, monkeypatch):
    def crash_in_phase_2(original):
        def training_phase(model, t):
            if (t + 1) // model.scenario.training.every == 2:
                model.trainer.run_phase(2, t, model.trainer_samples(t), seed=0)  # writes adapters, then dies
                raise RuntimeError("killed during training")
            return original(model, t)
        return training_phase

    path = tiny_scenario(tmp_path, tiny_model_dir, steps=6, every=3, training=True, aed=True, impact=0.01)
    resumed = crash_then_resume(monkeypatch, path, MarketModel, "training_phase", crash_in_phase_2)
    assert [r.table for r in compare_runs(learning_run[0].database, resumed.database) if not r.identical] == []


def test_resume_after_a_crash_between_phases_equals_the_uninterrupted_run(learning_run, tmp_path, tiny_model_dir, monkeypatch):
    def crash_at_step_5(original):
        def step(model):
            if model.next_step == 5:
                raise RuntimeError("killed while deliberating")
            return original(model)
        return step

    path = tiny_scenario(tmp_path, tiny_model_dir, steps=6, every=3, training=True, aed=True, impact=0.01)
    resumed = crash_then_resume(monkeypatch, path, MarketModel, "step", crash_at_step_5)
    assert [r.table for r in compare_runs(learning_run[0].database, resumed.database) if not r.identical] == []
