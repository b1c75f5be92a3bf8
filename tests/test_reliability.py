"""Runs that replay exactly, survive crashes, and fail cleanly on environment faults."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest
from helpers import crash_then_resume, tiny_scenario

from agents.decoding import parse_decision
from agents.llm import LLM, Completion
from analysis.compare import compare_runs
from core.errors import StoreError
from core.store import RunStore
from simulation.cli import EXIT_USER_ERROR, main
from simulation.model import MarketModel
from simulation.run import start


def _identical(first, second) -> bool:
    return all(result.identical for result in compare_runs(first, second))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("reference")
    return start(str(tiny_scenario(folder, tiny_model_dir, steps=6, impact=0.01)), plain=True)


def test_same_seed_gives_identical_tables(reference_run, tmp_path, tiny_model_dir):
    again = start(str(tiny_scenario(tmp_path, tiny_model_dir, steps=6, impact=0.01)), plain=True)
    results = compare_runs(reference_run.database, again.database)
    assert [r.table for r in results if not r.identical] == []
    assert {r.table: r.rows[0] for r in results}["decisions"] == 30


def test_another_seed_gives_other_decisions(reference_run, tmp_path, tiny_model_dir):
    other = start(str(tiny_scenario(tmp_path, tiny_model_dir, steps=6, impact=0.01, seed=12)), plain=True)
    differing = {r.table for r in compare_runs(reference_run.database, other.database) if not r.identical}
    assert "decisions" in differing


def test_resume_after_a_crash_equals_the_uninterrupted_run(reference_run, tmp_path, tiny_model_dir, monkeypatch):
    def crash_at_step_3(original):
        def step(model):
            if model.next_step == 3:
                assert model.store.last_committed_step() == 2
                raise RuntimeError("simulated crash")
            return original(model)
        return step

    path = tiny_scenario(tmp_path, tiny_model_dir, steps=6, impact=0.01)
    result = crash_then_resume(monkeypatch, path, MarketModel, "step", crash_at_step_3)
    assert result.status == "completed"
    assert _identical(reference_run.database, result.database)


def test_a_run_killed_before_its_agents_were_written_resumes_to_the_same_tables(reference_run, tmp_path, tiny_model_dir, monkeypatch):
    # Found by scripts/kill_resume.py: a SIGKILL between the run directory's rename and the first
    # insert left a run row and no agents, and the resume never wrote them.
    def crash_before_agents(original):
        def insert(store, table, rows):
            if table == "agents":
                raise RuntimeError("simulated kill")
            return original(store, table, rows)
        return insert

    path = tiny_scenario(tmp_path, tiny_model_dir, steps=6, impact=0.01)
    result = crash_then_resume(monkeypatch, path, RunStore, "insert", crash_before_agents)
    assert _identical(reference_run.database, result.database)


def test_a_crashed_run_is_marked_failed_with_its_error(tmp_path, tiny_model_dir, monkeypatch):
    def crash(model):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(MarketModel, "step", crash)
    with pytest.raises(RuntimeError):
        start(str(tiny_scenario(tmp_path, tiny_model_dir, steps=3)), plain=True)
    con = duckdb.connect(str(tmp_path / "runs" / "tiny" / "run.duckdb"), read_only=True)
    assert con.execute("SELECT status, error FROM run").fetchall() == [("failed", "RuntimeError: simulated crash")]
    con.close()


def test_a_step_that_fails_mid_commit_leaves_no_half_step(tmp_path, tiny_model_dir, monkeypatch):
    original_insert = RunStore.insert

    def fail_on_second_steps_row(store, table, rows):
        if table == "steps" and store.last_committed_step() == 1:
            raise duckdb.IOException("IO Error: No space left on device")
        return original_insert(store, table, rows)

    monkeypatch.setattr(RunStore, "insert", fail_on_second_steps_row)
    with pytest.raises(StoreError, match="disk is full"):
        start(str(tiny_scenario(tmp_path, tiny_model_dir, steps=5)), plain=True)
    con = duckdb.connect(str(tmp_path / "runs" / "tiny" / "run.duckdb"), read_only=True)
    per_table = {table: con.execute(f"SELECT count(DISTINCT step) FROM {table}").fetchall()[0][0] for table in ("market", "decisions", "steps", "factors_served")}
    status, error = con.execute("SELECT status, error FROM run").fetchall()[0]
    con.close()
    assert per_table == {"market": 2, "decisions": 2, "steps": 2, "factors_served": 2}
    assert status == "failed" and "disk is full" in error


def test_full_disk_through_the_cli_is_one_line_and_exit_2(tmp_path, tiny_model_dir, monkeypatch, capsys):
    def no_space(store, table, rows):
        raise duckdb.IOException("IO Error: No space left on device")

    monkeypatch.setattr(RunStore, "insert", no_space)
    code = main(["run", str(tiny_scenario(tmp_path, tiny_model_dir, steps=2)), "--plain"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR and len(err.splitlines()) == 1
    assert "disk is full" in err and "--resume" in err


def test_a_database_locked_by_another_process_is_a_clear_error(reference_run, tmp_path, capsys):
    locked = tmp_path / "locked.duckdb"
    locked.write_bytes(reference_run.database.read_bytes())
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(locked)!r}); print('ready', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        code = main(["run", "--resume", str(locked)])
        err = capsys.readouterr().err.strip()
    finally:
        holder.kill()
    assert code == EXIT_USER_ERROR and len(err.splitlines()) == 1
    assert "locked by another process" in err and str(locked) in err


def test_resuming_a_completed_run_is_refused(reference_run, capsys):
    assert main(["run", "--resume", str(reference_run.run_dir)]) == EXIT_USER_ERROR
    assert "already completed" in capsys.readouterr().err


@pytest.mark.parametrize("bad_completion, reason", [
    ("", "empty"),
    ("the market " * 200, "truncated"),
    ("Strong buy.\nDecision: lots", "non_numeric"),
    ("To the moon.\nDecision: 99", "out_of_range"),
])
def test_model_misbehaviour_never_crashes_a_run_and_is_counted(bad_completion, reason, tmp_path, tiny_model_dir, monkeypatch):
    """A backend whose text escapes the decision slot (the slot itself cannot produce these)."""

    def misbehaving_generate(llm, prompts, temperatures, agents=None, **kwargs):
        decision, why = parse_decision(bad_completion)
        return [Completion(p, [1], [2], [True], bad_completion, bad_completion[:40], decision, why, 0.0) for p in prompts]

    monkeypatch.setattr(LLM, "generate", misbehaving_generate)
    result = start(str(tiny_scenario(tmp_path, tiny_model_dir, steps=2)), plain=True)
    con = duckdb.connect(str(result.database), read_only=True)
    rows = con.execute("SELECT fallback, fallback_reason, decision_depth, reward, realised_return FROM decisions").fetchall()
    con.close()
    assert result.status == "completed" and len(rows) == 10
    expected_depth = {"out_of_range": 10.0}.get(reason, 0.0)  # clipped, or no position
    assert all(fallback and why == reason and depth == expected_depth and reward == pytest.approx(realised * depth)
               for fallback, why, depth, reward, realised in rows)


def test_overrides_are_recorded_and_a_resume_applies_them_again(tmp_path, tiny_model_dir, monkeypatch):
    def crash_at_step_2(original):
        def step(model):
            if model.next_step == 2:
                raise RuntimeError("simulated crash")
            return original(model)
        return step

    path = tiny_scenario(tmp_path, tiny_model_dir, steps=6)
    result = crash_then_resume(monkeypatch, path, MarketModel, "step", crash_at_step_2, overrides=["run.steps=3", "market.impact=0.02"])
    assert result.status == "completed"
    con = duckdb.connect(str(result.database), read_only=True)
    overrides, planned = con.execute("SELECT overrides, steps_planned FROM run").fetchone()
    steps = con.execute("SELECT count(DISTINCT step) FROM decisions").fetchone()[0]
    con.close()
    assert json.loads(overrides) == ["run.steps=3", "market.impact=0.02"]
    assert planned == 3 and steps == 3  # the resume ran to the overridden 3 steps, not the file's 6
