"""APO: the guards, the selection with a scripted optimizer, the replay's information, resume and frozen weights."""

from __future__ import annotations

import hashlib

import duckdb
import pytest
from helpers import crash_then_resume, tiny_scenario

from agents.llm import LLM, Completion
from analysis.compare import compare_runs
from simulation.run import start
from training.apo import PromptOptimizer, ReplayState, check_candidate
from training.config import TrainingConfig

APO_KEYS = 'micro_batch = 4\nmethod = "apo"\nmax_samples = 4\n'
APO_TABLE = "[training.apo]\ncandidates = 2\nbeam = 2\nexamples = 2\ncritique_tokens = 8\nprompt_tokens = 8\n"


def apo_scenario(folder, model_dir, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    path = tiny_scenario(folder, model_dir, training=True, extra=APO_TABLE, **kwargs)
    path.write_text(path.read_text().replace("micro_batch = 4\n", APO_KEYS))
    return path


def test_the_guards_keep_the_placeholder_and_keep_data_out():
    assert check_candidate("Instruction: Say whether SYN0 will rise.", ["SYN0"], 300) == ("Say whether {asset} will rise.", "")
    assert check_candidate('"Think about {asset} carefully."\nmore text', [], 300) == ("Think about {asset} carefully.", "")
    assert check_candidate("Think carefully.", [], 300)[1] == "rejected: no {asset} placeholder"
    assert check_candidate("Buy {asset} when value is +0.84.", [], 300)[1].startswith("rejected: holds a digit")
    assert check_candidate("On 2021-03-04 buy {asset}.", [], 300)[1].startswith("rejected: holds a digit")
    assert check_candidate("{asset} " + "x" * 400, [], 300)[1] == "rejected: longer than 300 characters"
    assert check_candidate("Use {asset} and {date}.", [], 300)[1] == "rejected: a placeholder other than {asset}"
    assert check_candidate("", [], 300)[1] == "rejected: empty answer"


class ScriptedOptimizer:
    """Writes the critique 'too timid' and then, in turn, the rewrites it is given."""

    def __init__(self, rewrites: list[str]):
        self.rewrites, self.calls = list(rewrites), 0

    def complete(self, conversations, agents=None, **_):
        self.calls += 1
        if self.calls == 1:
            return [("It is too timid.", 40, 5) for _ in conversations]
        return [(self.rewrites.pop(0), 50, 9) for _ in conversations]


class KeywordAgent:
    """An agent model whose expected decision reads the strategy line: +8 for 'buy', -8 for 'sell', else 0."""

    routes_agents = False

    def generate(self, prompts, temperatures, agents=None, **_):
        def decide(prompt: str) -> float:
            instruction = prompt.splitlines()[-1].lower()
            return 8.0 if "buy" in instruction else -8.0 if "sell" in instruction else 0.0
        return [Completion(prompt=p, prompt_ids=[1] * 10, completion_ids=[2] * 4, trainable=[True] * 4, completion="", belief="b",
                           decision_depth=decide(p), fallback_reason=None, latency_s=0.0, expected_decision=decide(p), decision_std=0.0) for p in prompts]


def _states(returns: list[float]) -> list[ReplayState]:
    strategy = "In one sentence, state your belief about {asset}'s return tomorrow."
    return [ReplayState(step=i, asset="SYN0", prompt="SYN0 price 100.\nIn one sentence, state your belief about SYN0's return tomorrow.",
                        strategy=strategy, seen="Fundamental factors: value_0=+0.50.", belief="b", decision=0.0, reward=0.0,
                        realised_return=r, temperature=1.0, risk_preference=0.5, recent_variance=1e-4) for i, r in enumerate(returns)]


def _optimizer(rewrites: list[str]) -> PromptOptimizer:
    config = TrainingConfig(method="apo", apo={"candidates": len(rewrites), "beam": 2, "holdout": 0.5})
    return PromptOptimizer(KeywordAgent(), ScriptedOptimizer(rewrites), config, [0], ["SYN0"], reward="linear", risk_aversion=0.0,
                           belief_tokens=8, max_prompt_tokens=256, batch_size=8)


def test_a_better_prompt_is_adopted_a_worse_one_kept_out_and_a_breaking_one_rejected():
    optimizer = _optimizer(["Buy {asset} when in doubt.", "Sell {asset} when in doubt.", "Buy SYN0 at 101.5 now.", "Be bold."])
    result = optimizer.run_phase(1, 9, {0: _states([0.01, 0.02, 0.015, 0.01, 0.03, 0.02])}, seed=5)  # a rising market: buying pays
    by_text = {row.text: row for row in result.prompts if row.parent_version is not None}
    assert by_text["Buy {asset} when in doubt."].adopted and by_text["Buy {asset} when in doubt."].reason.startswith("adopted")
    assert not by_text["Sell {asset} when in doubt."].adopted and by_text["Sell {asset} when in doubt."].reason.startswith("kept out")
    assert by_text["Buy SYN0 at 101.5 now."].reason.startswith("rejected: holds a digit")
    assert by_text["Be bold."].reason == "rejected: no {asset} placeholder"
    assert result.current[0] == (by_text["Buy {asset} when in doubt."].version, "Buy {asset} when in doubt.")
    assert {row["purpose"] for row in result.usage} == {"critique", "propose", "replay"} and result.critiques[0]["text"] == "It is too timid."
    # a falling market afterwards: the adopted 'buy' prompt stays only if a rewrite does not beat it on held-back states
    worse = _optimizer(["Sell {asset} when in doubt.", "Think about {asset}."])
    worse.current[0], worse.texts[0][7], worse.beams[0] = 7, "Buy {asset} when in doubt.", [7]
    kept = worse.run_phase(2, 19, {0: _states([0.01, 0.02, 0.01, 0.03])}, seed=6)
    assert kept.current[0] == (7, "Buy {asset} when in doubt.")


def test_the_replay_pays_each_candidate_at_the_realised_returns_of_the_states_it_replays():
    optimizer = _optimizer(["Buy {asset}."])
    states = _states([0.01, -0.02, 0.03])
    pays, _, _ = optimizer._replay(0, "Buy {asset} now.", states, seed=1)
    assert pays == pytest.approx([8 * 0.01, 8 * -0.02, 8 * 0.03])  # r x E[d] of exactly these states


def test_apo_replays_only_states_up_to_the_phase_and_resume_inside_a_phase_gives_identical_tables(tmp_path, tiny_model_dir, monkeypatch):
    scenario = apo_scenario(tmp_path / "whole", tiny_model_dir, steps=4, every=2)
    seen_steps = []
    original = PromptOptimizer.run_phase

    def watching(self, phase, step, states, seed):
        seen_steps.append((step, max(state.step for agent_states in states.values() for state in agent_states)))
        return original(self, phase, step, states, seed)

    monkeypatch.setattr(PromptOptimizer, "run_phase", watching)
    whole = start(str(scenario), plain=True)
    monkeypatch.setattr(PromptOptimizer, "run_phase", original)
    assert seen_steps == [(1, 1), (3, 3)]  # a phase after step t replays states up to t, nothing later
    with duckdb.connect(str(whole.database), read_only=True) as con:
        phases = con.execute("SELECT phase, count(*) FROM prompts GROUP BY phase ORDER BY phase").fetchall()
        usage = con.execute("SELECT DISTINCT purpose FROM apo_usage ORDER BY 1").fetchall()
        versions = con.execute("SELECT DISTINCT prompt_version FROM decisions").fetchall()
    assert [phase for phase, _ in phases] == [0, 1, 2] and [u for (u,) in usage] == ["critique", "propose", "replay"] and versions
    from analysis.report import main_report

    page = main_report([str(whole.run_dir)], None).read_text()
    assert "<h2>Prompt optimisation (APO)</h2>" in page and "Tokens and seconds per phase" in page

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    scenario_copy = crashed / "scenario.toml"
    scenario_copy.write_text(scenario.read_text().replace(str(tmp_path / "whole"), str(crashed)))
    calls = {"n": 0}

    def crashing(select):
        def inner(self, agent, scored):
            calls["n"] += 1
            if calls["n"] == 3:  # inside phase 1, after two agents were selected
                raise RuntimeError("killed inside an APO phase")
            return select(self, agent, scored)
        return inner

    resumed = crash_then_resume(monkeypatch, scenario_copy, PromptOptimizer, "_select", crashing)
    assert resumed.status == "completed"
    assert all(table.identical for table in compare_runs(whole.database, resumed.database)), [
        (t.table, t.detail) for t in compare_runs(whole.database, resumed.database) if not t.identical]


def test_a_frozen_apo_run_never_changes_the_model_weights(tmp_path, tiny_model_dir, monkeypatch):
    loaded = []
    original = LLM.load.__func__

    def keep(cls, *args, **kwargs):
        llm = original(cls, *args, **kwargs)
        loaded.append(llm)
        return llm

    monkeypatch.setattr(LLM, "load", classmethod(keep))
    scenario = apo_scenario(tmp_path, tiny_model_dir, steps=2, every=1)
    before = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in LLM.load(str(tiny_model_dir), dtype="float32").model.state_dict().values())).hexdigest()
    result = start(str(scenario), plain=True)
    after = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in loaded[1].model.state_dict().values())).hexdigest()
    assert result.status == "completed" and before == after and loaded[1].adapters is None
    assert not (result.run_dir / "adapters").exists()


def test_evaluate_replays_an_apo_runs_adopted_prompts_and_untrained_agents_the_initial_one(tmp_path, tiny_model_dir):
    from agents.prompts import DEFAULT_STRATEGY
    from simulation.evaluate import evaluate

    result = start(str(apo_scenario(tmp_path, tiny_model_dir, steps=4, every=2)), plain=True)
    adopted = "State whether {asset} will rise or fall tomorrow, in one sentence."
    con = duckdb.connect(str(result.database))  # stands in for a phase that adopted a rewrite (the tiny model writes none that pass)
    con.execute("INSERT INTO prompts (phase, step, agent_id, version, parent_version, text, in_beam, adopted, reason) VALUES (1, 1, 0, 77, 0, ?, true, true, 'adopted')", [adopted])
    con.close()
    decisions = duckdb.connect(str(evaluate(result.run_dir, phase=1).database), read_only=True).execute(
        "SELECT strategy, agent_id, prompt_version, adapter_version, prompt FROM eval_decisions WHERE strategy IN ('trained', 'untrained')").df()
    trained, untrained = decisions[decisions["strategy"] == "trained"], decisions[decisions["strategy"] == "untrained"]
    mine = trained[trained["agent_id"] == 0]
    assert len(mine) and (mine["prompt_version"] == 77).all() and mine["prompt"].str.contains("State whether SYN0 will rise or fall tomorrow").all()
    assert (trained[trained["agent_id"] != 0]["prompt_version"] == 0).all()  # agents whose phases adopted nothing keep the initial prompt
    assert (untrained["prompt_version"] == 0).all() and untrained["prompt"].str.contains(DEFAULT_STRATEGY.format(asset="SYN0"), regex=False).all()
    assert set(decisions["adapter_version"]) == {0} and not (result.run_dir / "adapters").exists()  # APO trains no adapter
