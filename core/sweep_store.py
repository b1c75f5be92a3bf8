"""A sweep's manifest: one DuckDB file (`SWEEP_DB_FILE`) in the sweep's folder, beside its runs.

On the ground floor for the same reason as `core/store.py`: the sweep that writes it
(`simulation/sweep.py`) and the queries and reports that read it (`analysis/`) share its schema.
Only the sweep's driver writes it, and it opens the file for each update and closes it at once,
so a query can read the manifest while the sweep runs. The tables are in docs/schema.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb

SWEEP_DB_FILE = "sweep.duckdb"
RUNS_FOLDER = "runs"  # <sweep>/runs/<run_key>/run.duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep (
    name VARCHAR, scenario_path VARCHAR, scenario_toml VARCHAR, seeds VARCHAR, grid VARCHAR, fixed VARCHAR,
    created_at TIMESTAMP, code_commit VARCHAR, package_versions VARCHAR);
CREATE TABLE IF NOT EXISTS sweep_runs (
    run_key VARCHAR PRIMARY KEY, seed BIGINT, settings VARCHAR, overrides VARCHAR, path VARCHAR,
    status VARCHAR, error VARCHAR, attempts INTEGER, threads INTEGER, seconds DOUBLE,
    started_at TIMESTAMP, finished_at TIMESTAMP);
"""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_DB_FILE).is_file()


class SweepManifest:
    """The manifest of the sweep in `folder`; every method opens the file, writes and closes it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / SWEEP_DB_FILE

    def _connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.path), read_only=read_only)

    def exists(self) -> bool:
        return self.path.is_file()

    def create(self, header: dict, runs: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(SCHEMA)
            con.execute("INSERT INTO sweep VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [header["name"], header["scenario_path"], header["scenario_toml"], json.dumps(header["seeds"]), json.dumps(header["grid"]),
                         json.dumps(header["fixed"]), now(), header["code_commit"], header["package_versions"]])
            for run in runs:
                con.execute("INSERT INTO sweep_runs VALUES (?, ?, ?, ?, ?, 'pending', NULL, 0, NULL, NULL, NULL, NULL)",
                            [run["run_key"], run["seed"], json.dumps(run["settings"]), json.dumps(run["overrides"]), run["path"]])

    def header(self) -> dict:
        with self._connect(read_only=True) as con:
            row = con.execute("SELECT name, scenario_path, scenario_toml, seeds, grid, fixed FROM sweep").fetchone()
        name, scenario_path, scenario_toml, seeds, grid, fixed = row
        return {"name": name, "scenario_path": scenario_path, "scenario_toml": scenario_toml, "seeds": json.loads(seeds),
                "grid": json.loads(grid), "fixed": json.loads(fixed)}

    def runs(self) -> list[dict]:
        with self._connect(read_only=True) as con:
            frame = con.execute("SELECT * FROM sweep_runs ORDER BY run_key").df()
        return frame.to_dict("records")

    def update(self, run_key: str, **values) -> None:
        columns = ", ".join(f"{column} = ?" for column in values)
        with self._connect() as con:
            con.execute(f"UPDATE sweep_runs SET {columns} WHERE run_key = ?", [*values.values(), run_key])

    def started(self, run_key: str, threads: int) -> None:
        with self._connect() as con:
            con.execute("UPDATE sweep_runs SET status = 'running', error = NULL, attempts = attempts + 1, threads = ?, started_at = ?, "
                        "finished_at = NULL WHERE run_key = ?", [threads, now(), run_key])
