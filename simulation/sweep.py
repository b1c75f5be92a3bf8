"""`python -m simulation sweep SCENARIO`: seeds × a grid of settings, each combination one run on Ray.

The sweep lives in one folder, `<output_dir>/sweeps/<name>/`: its manifest `sweep.duckdb`
(`core/sweep_store.py`) and `runs/<run_key>/run.duckdb`, one ordinary run database per
combination, written by the Ray task that ran it. Running the same command again resumes the
sweep: finished runs are skipped, unfinished ones continue from their last committed step
(`simulation.run.resume`), failed ones are tried again. A failed run never stops the others; the
sweep ends with a non-zero exit code and names it. A different command under the same name is
refused, so the manifest always describes the runs beside it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.rundb import open_run_db
from core.errors import UserError
from core.parallel import JobRunner
from core.provenance import git_commit, package_versions_json
from core.store import RUN_DB_FILE
from core.sweep_store import RUNS_FOLDER, SweepManifest, now
from simulation.scenario import read_scenario_text
from simulation.sweep_console import SweepConsole
from simulation.sweep_plan import parse_grid, parse_seeds, plan_runs, validate_runs


@dataclass
class SweepResult:
    folder: Path
    runs: int
    completed: int
    failed: dict[str, str]  # run_key -> its error
    skipped: int  # finished before this command
    seconds: float


def execute_run(scenario_path: str, overrides: list[str], runs_dir: str, run_key: str) -> dict:
    """One run of the sweep, inside a Ray worker: start it, resume it, or see that it is done."""
    from simulation import run as runs

    runs.quiet_libraries()
    run_dir = Path(runs_dir) / run_key
    stale = run_dir.with_name(run_key + ".starting")  # killed while its database was being made
    if stale.exists():
        shutil.rmtree(stale)
    if (run_dir / RUN_DB_FILE).is_file():
        with open_run_db(run_dir / RUN_DB_FILE) as con:
            status = con.execute("SELECT status FROM run").fetchone()
        if status and status[0] == "completed":
            return {"status": "completed", "resumed": False}
        result = runs.resume(run_dir, plain=True)
        return {"status": result.status, "resumed": True}
    result = runs.start(scenario_path, plain=True, output_dir=runs_dir, overrides=overrides + [f"run.name={json.dumps(run_key)}"])
    if result.run_dir != run_dir:
        raise RuntimeError(f"the run went to {result.run_dir}, not {run_dir}")
    return {"status": result.status, "resumed": False}


def sweep_folder(scenario_path: str, name: str | None, output_dir: str | None, scenario_output_dir: str) -> Path:
    return Path(output_dir or scenario_output_dir).expanduser() / "sweeps" / (name or Path(scenario_path).stem)


def run_sweep(scenario_path: str, *, seeds: str = "0", sets: list[str] | None = None, name: str | None = None, output_dir: str | None = None,
              address: str | None = None, cpus_per_run: float | None = None, gpus_per_run: float = 0, plain: bool = False) -> SweepResult:
    started = time.perf_counter()
    seed_list = parse_seeds(seeds)
    grid, fixed = parse_grid(list(sets or []))
    planned = plan_runs(seed_list, grid, fixed)
    scenario = validate_runs(scenario_path, planned)  # every run's settings, before anything starts
    folder = sweep_folder(scenario_path, name, output_dir, scenario.run.output_dir)
    runs_dir = folder / RUNS_FOLDER
    manifest = SweepManifest(folder)
    header = {"name": folder.name, "scenario_path": str(Path(scenario_path).resolve()), "scenario_toml": read_scenario_text(Path(scenario_path)),
              "seeds": seed_list, "grid": grid, "fixed": fixed}
    if manifest.exists():
        _same_sweep(manifest, header)
    else:
        manifest.create({**header, "code_commit": git_commit()[0], "package_versions": package_versions_json()},
                        [{"run_key": run.key, "seed": run.seed, "settings": run.settings, "overrides": run.overrides, "path": str(runs_dir / run.key)}
                         for run in planned])
    rows = {row["run_key"]: row for row in manifest.runs()}
    todo = [run for run in planned if rows[run.key]["status"] != "completed" or not (runs_dir / run.key / RUN_DB_FILE).is_file()]
    cpus = cpus_per_run if cpus_per_run is not None else 1.0
    failed: dict[str, str] = {}
    console = SweepConsole(folder, [run.key for run in planned], done_before=set(rows) - {run.key for run in todo}, plain=plain)
    threads = max(1, int(cpus))
    try:
        with JobRunner(cpus_per_job=cpus, gpus_per_job=gpus_per_run, address=address) as runner:
            console.slots = runner.slots
            jobs = [(header["scenario_path"], run.overrides, str(runs_dir), run.key) for run in todo]

            def submitted(index: int) -> None:
                manifest.started(todo[index].key, threads)
                console.started(todo[index].key)

            with console:
                for result in runner.run(execute_run, jobs, on_submit=submitted):
                    key = todo[result.index].key
                    status = result.value["status"] if result.ok else "failed"
                    manifest.update(key, status=status, error=result.error, seconds=round(result.seconds, 1), finished_at=now())
                    if status != "completed":
                        failed[key] = result.error or status
                    console.finished(key, status, result.seconds, result.error)
    except KeyboardInterrupt:
        for row in manifest.runs():
            if row["status"] == "running":
                manifest.update(row["run_key"], status="interrupted", error="the sweep was interrupted", finished_at=now())
        raise
    completed = sum(row["status"] == "completed" for row in manifest.runs())
    return SweepResult(folder, len(planned), completed, failed, len(planned) - len(todo), time.perf_counter() - started)


def _same_sweep(manifest: SweepManifest, header: dict) -> None:
    recorded = manifest.header()
    for key in ("scenario_toml", "seeds", "grid", "fixed"):
        if recorded[key] != header[key]:
            what = {"scenario_toml": "the scenario file's text", "seeds": "--seeds", "grid": "the swept --set values", "fixed": "the fixed --set values"}[key]
            raise UserError(str(manifest.path), key, f"a sweep named {recorded['name']!r} is here with other settings ({what} differ)",
                            "re-run the command that made it to resume it, or give this sweep another --name")

