"""Sweeps on a local Ray (real Ray, real runs of the tiny model) and cross-run SQL over their databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from helpers import tiny_scenario

from analysis.compare import compare_runs
from analysis.query import query, write_query
from core.errors import ScenarioError, UserError
from core.sweep_store import SweepManifest
from simulation.cli import main
from simulation.sweep import run_sweep
from simulation.sweep_plan import parse_grid, parse_seeds, plan_runs, split_values

ROOT = Path(__file__).resolve().parent.parent
GRID = ["market.impact=0.0,0.05"]


def test_seeds_and_grid_values_parse_as_written():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,2,4") == [0, 2, 4]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    assert split_values('[1, 2],"a,b",3') == ["[1, 2]", '"a,b"', "3"]
    grid, fixed = parse_grid(["training.trust=0.1,0.2", "run.steps=4"])
    assert grid == {"training.trust": ["0.1", "0.2"]} and fixed == ["run.steps=4"]
    runs = plan_runs([0, 1], grid, fixed)
    assert [(run.seed, run.settings["training.trust"]) for run in runs] == [(0, "0.1"), (1, "0.1"), (0, "0.2"), (1, "0.2")]
    assert len({run.key for run in runs}) == 4 and runs[0].overrides == ["run.steps=4", "training.trust=0.1", "run.seed=0"]
    for bad in ("", "3-1", "x", "-2"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(UserError, match="use --seeds"):
        parse_grid(["run.seed=1,2"])


@pytest.mark.parametrize("sets, key", [(["market.impakt=0.1,0.2"], "market.impakt"), (["market.impact=0.1,7"], "market.impact")])
def test_a_bad_set_is_one_line_before_anything_starts(tmp_path, tiny_model_dir, capsys, sets, key):
    scenario = tiny_scenario(tmp_path, tiny_model_dir, steps=2)
    with pytest.raises(ScenarioError, match=key.replace(".", r"\.")):
        run_sweep(str(scenario), seeds="0-1", sets=sets, plain=True)
    assert not (tmp_path / "runs").exists()  # no folder, no Ray
    code = main(["sweep", str(scenario), "--seeds", "0-1", *[f"--set={item}" for item in sets], "--plain"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and key in error and "Traceback" not in error


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir):
    """One uninterrupted 2 x 2 sweep (seeds x market.impact) of tiny runs with a training phase."""
    folder = tmp_path_factory.mktemp("sweep")
    scenario = tiny_scenario(folder, tiny_model_dir, steps=4, training=True, every=2)
    result = run_sweep(str(scenario), seeds="0-1", sets=GRID, plain=True)
    return scenario, result


def test_a_2x2_sweep_runs_every_combination_on_ray_and_records_it(swept):
    scenario, result = swept
    assert result.runs == 4 and result.completed == 4 and not result.failed
    runs = SweepManifest(result.folder).runs()
    assert {(row["seed"], row["settings"]) for row in runs} == {(seed, f'{{"market.impact": "{impact}"}}') for seed in (0, 1) for impact in ("0.0", "0.05")}
    assert all(row["status"] == "completed" and row["attempts"] == 1 and row["threads"] == 1 for row in runs)
    for row in runs:  # each run is an ordinary run database with its settings applied and recorded
        with duckdb.connect(str(Path(row["path"]) / "run.duckdb"), read_only=True) as con:
            seed, overrides, status = con.execute("SELECT master_seed, overrides, status FROM run").fetchone()
            impact = con.execute("SELECT DISTINCT impact FROM market").fetchone()[0]
        assert seed == row["seed"] and status == "completed" and "run.seed" in overrides
        assert impact == float(eval(row["settings"])["market.impact"])
    again = run_sweep(str(scenario), seeds="0-1", sets=GRID, plain=True)  # the same command: all done, nothing runs
    assert again.skipped == 4 and again.completed == 4
    assert all(row["attempts"] == 1 for row in SweepManifest(result.folder).runs())


def test_another_command_under_the_same_name_is_refused(swept):
    scenario, _ = swept
    with pytest.raises(UserError, match="other settings"):
        run_sweep(str(scenario), seeds="0-2", sets=GRID, plain=True)


def test_a_cross_run_query_returns_one_row_group_per_run(swept, capsys):
    _, result = swept
    assert main(["query", "SELECT count(*) AS runs FROM runs", str(result.folder)]) == 0
    assert capsys.readouterr().out.split() == ["runs", "4"]
    frame = query("SELECT run_id, seed, market_impact, group_name, count(*) AS n, corr(expected_decision, realised_return) AS corr "
                  "FROM decisions GROUP BY ALL ORDER BY ALL", result.folder)
    assert frame["run_id"].nunique() == 4 and len(frame) == 4 * 3  # 3 groups per run
    assert set(zip(frame["seed"], frame["market_impact"], strict=True)) == {(s, i) for s in (0, 1) for i in (0.0, 0.05)}
    assert (frame.groupby("run_id")["n"].sum() == 4 * 5).all()  # 4 steps x 5 agents
    runs = query("SELECT * FROM runs ORDER BY run_key", result.folder)
    assert list(runs["status"]) == ["completed"] * 4
    agents = query("SELECT run_seed, seed FROM agents", result.folder)  # agents.seed is the agent's; the run's is run_seed
    assert set(agents["run_seed"]) == {0, 1} and agents["seed"].nunique() > 2
    one = query("SELECT DISTINCT run_id, seed FROM market", Path(runs["path"].iloc[0]))  # a lone run works the same way
    assert len(one) == 1
    out = result.folder / "corr.parquet"
    assert "rows written" in write_query("SELECT seed, count(*) AS n FROM decisions GROUP BY ALL", [result.folder], out)
    assert len(duckdb.read_parquet(str(out)).df()) == 2
    with pytest.raises(UserError, match="check the SQL"):
        query("SELECT nope FROM decisions", result.folder)


def test_the_report_takes_a_sweep(swept):
    from analysis.report import main_report

    _, result = swept
    page = main_report([str(result.folder)], None).read_text()
    assert "Sweep" in page and "market_impact" in page and "± " in page


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "simulation", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kwargs)


def test_a_sweep_killed_midway_resumes_to_the_tables_of_an_uninterrupted_one(swept, tmp_path, tiny_model_dir):
    """The whole process group (driver, Ray and its workers) is killed after the first run ends;
    the same command then completes the sweep, and every run's tables equal the uninterrupted sweep's."""
    _, uninterrupted = swept
    scenario = tiny_scenario(tmp_path, tiny_model_dir, steps=4, training=True, every=2)
    args = ["sweep", str(scenario), "--seeds", "0-1", "--set", GRID[0], "--plain"]
    process = _run_cli(args)
    deadline = time.monotonic() + 300
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.strip().startswith("completed"):
            break
        assert time.monotonic() < deadline, "".join(lines)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    statuses = [row["status"] for row in SweepManifest(tmp_path / "runs" / "sweeps" / "scenario").runs()]
    assert statuses.count("completed") >= 1 and statuses.count("completed") < 4, statuses
    resumed = run_sweep(str(scenario), seeds="0-1", sets=GRID, plain=True)
    assert resumed.completed == 4 and not resumed.failed and resumed.skipped >= 1
    for row in SweepManifest(uninterrupted.folder).runs():
        twin = resumed.folder / "runs" / row["run_key"]
        assert all(table.identical for table in compare_runs(row["path"], twin)), row["run_key"]


def test_a_failed_run_does_not_stop_the_others(tmp_path, tiny_model_dir, capsys):
    """One combination's model folder passes the checks (it has a config.json) but cannot load: that
    run fails in its worker, the other finishes, and the exit code and the manifest say so."""
    scenario = tiny_scenario(tmp_path, tiny_model_dir, steps=2)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    code = main(["sweep", str(scenario), "--seeds", "0", "--set", f'model.path="{tiny_model_dir}","{broken}"', "--plain"])
    printed = capsys.readouterr().out
    assert code == 1 and "1 of 2 runs completed" in printed and "failed: 001_seed0" in printed
    rows = SweepManifest(tmp_path / "runs" / "sweeps" / "scenario").runs()
    assert [row["status"] for row in rows] == ["completed", "failed"] and rows[1]["error"]


def test_each_job_runs_in_its_own_process_with_its_cpu_share_as_threads_and_a_failure_is_reported():
    import torch

    from core.parallel import JobRunner

    with JobRunner(cpus_per_job=1) as runner:
        pids = [job.value for job in runner.run(os.getpid, [(), (), ()])]
        threads = [job.value for job in runner.run(torch.get_num_threads, [()])]
        jobs = sorted(runner.run(int, [("1",), ("x",), ("3",)]), key=lambda job: job.index)
    assert len(set(pids)) == 3 and os.getpid() not in pids  # a fresh worker per job: nothing carries over
    assert threads == [1]
    assert [job.ok for job in jobs] == [True, False, True] and [jobs[0].value, jobs[2].value] == [1, 3]
    assert jobs[1].error.startswith("ValueError") and len(jobs[1].error.splitlines()) == 1
    with pytest.raises(UserError, match="no job fits"):
        JobRunner(cpus_per_job=64).__enter__()
