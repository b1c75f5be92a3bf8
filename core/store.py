"""The run store: one DuckDB file per run (`RUN_DB_FILE`), one transaction per trading step.

It sits on the ground floor because both the engine that writes a run (`simulation/`) and the
analysis that reads one (`analysis/rundb.py`) need its schema and its file name.

The tables are documented in docs/schema.md. A step's market, decision, factor and event rows
are written in a single transaction, so a run killed at any moment keeps every step it finished
and never a half step; resume reads the last committed step back from here. Bulk rows go in as
pandas frames (one INSERT per table per step); NaN is stored as NULL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from core.errors import StoreError

RUN_DB_FILE = "run.duckdb"  # inside the run directory

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    run_id VARCHAR, name VARCHAR, scenario_path VARCHAR, scenario_toml VARCHAR, overrides VARCHAR, master_seed BIGINT,
    model_id VARCHAR, model_sha256 VARCHAR, device VARCHAR, dtype VARCHAR, package_versions VARCHAR,
    status VARCHAR, error VARCHAR, steps_planned INTEGER, started_at TIMESTAMP, finished_at TIMESTAMP,
    wall_seconds DOUBLE, backend VARCHAR);
CREATE TABLE IF NOT EXISTS agents (
    agent_id INTEGER PRIMARY KEY, group_name VARCHAR, visible_categories VARCHAR[], optimism DOUBLE,
    rationality DOUBLE, risk_preference DOUBLE, temperature DOUBLE, memory_length INTEGER, seed BIGINT);
CREATE TABLE IF NOT EXISTS market (
    step INTEGER, date DATE, asset VARCHAR, price DOUBLE, next_price DOUBLE, "return" DOUBLE,
    fundamental_price DOUBLE, fundamental_return DOUBLE, net_demand DOUBLE, volume DOUBLE,
    impact DOUBLE, shock DOUBLE, PRIMARY KEY (step, asset));
CREATE TABLE IF NOT EXISTS decisions (
    step INTEGER, date DATE, agent_id INTEGER, group_name VARCHAR, asset VARCHAR, prompt VARCHAR, belief VARCHAR,
    completion VARCHAR, decision_depth DOUBLE, fallback BOOLEAN, fallback_reason VARCHAR,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s DOUBLE, adapter_version INTEGER,
    realised_return DOUBLE, reward DOUBLE, position DOUBLE, wealth DOUBLE,
    expected_decision DOUBLE, decision_std DOUBLE,
    prompt_ids INTEGER[], completion_ids INTEGER[], trainable_mask BOOLEAN[], served_by VARCHAR, retries INTEGER,
    prompt_version INTEGER, PRIMARY KEY (step, agent_id, asset));
CREATE TABLE IF NOT EXISTS prompts (
    phase INTEGER, step INTEGER, agent_id INTEGER, version INTEGER, parent_version INTEGER, text VARCHAR,
    replay_score DOUBLE, heldout_score DOUBLE, in_beam BOOLEAN, adopted BOOLEAN, reason VARCHAR);
CREATE TABLE IF NOT EXISTS critiques (
    phase INTEGER, agent_id INTEGER, version INTEGER, text VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER);
CREATE TABLE IF NOT EXISTS apo_usage (
    phase INTEGER, agent_id INTEGER, purpose VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, seconds DOUBLE);
CREATE TABLE IF NOT EXISTS factors_served (
    step INTEGER, agent_id INTEGER, asset VARCHAR, category VARCHAR, name VARCHAR,
    factor_date DATE, value DOUBLE);
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY, date DATE, committed_at TIMESTAMP, wall_seconds DOUBLE,
    decisions INTEGER, completion_tokens INTEGER, decisions_per_second DOUBLE, tokens_per_second DOUBLE);
CREATE TABLE IF NOT EXISTS events (
    step INTEGER, kind VARCHAR, category VARCHAR, asset VARCHAR, value DOUBLE, text VARCHAR);
CREATE TABLE IF NOT EXISTS training (
    phase INTEGER, step INTEGER, agent_id INTEGER, samples INTEGER, heldout_states INTEGER, beliefs INTEGER,
    epochs INTEGER, kept_epoch INTEGER, loss DOUBLE, decision_kl DOUBLE, belief_kl DOUBLE, grad_norm DOUBLE,
    heldout_pay_before DOUBLE, heldout_pay_after DOUBLE, heldout_t DOUBLE, belief_advantage_std DOUBLE,
    reward_mean DOUBLE, reward_std DOUBLE, seconds DOUBLE, adapter_path VARCHAR,
    adapter_version INTEGER, belief_text_share DOUBLE, PRIMARY KEY (phase, agent_id));
CREATE TABLE IF NOT EXISTS aed (
    phase INTEGER PRIMARY KEY, step INTEGER, n_probes INTEGER, n_agents INTEGER, aed_decision DOUBLE,
    aed_belief DOUBLE, embedder VARCHAR);
CREATE TABLE IF NOT EXISTS aed_agents (
    phase INTEGER, agent_id INTEGER, mean_decision DOUBLE, decision_drift DOUBLE, belief_drift DOUBLE);
CREATE TABLE IF NOT EXISTS warnings (
    first_step INTEGER, category VARCHAR, message VARCHAR, source VARCHAR, count INTEGER);
CREATE TABLE IF NOT EXISTS aed_probes (
    phase INTEGER, probe INTEGER, agent_id INTEGER, belief VARCHAR, decision_depth DOUBLE, expected_decision DOUBLE);
"""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class RunStore:
    """Owns the run's DuckDB connection; every write goes through here."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
            if not read_only:
                self.con.execute(SCHEMA)
        except duckdb.IOException as error:
            raise _store_error(self.path, error) from None

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        try:
            self.con.begin()
            try:
                yield self.con
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise
        except (duckdb.IOException, OSError) as error:
            raise _store_error(self.path, error) from None

    def insert(self, table: str, rows: list[dict[str, Any]] | pd.DataFrame) -> None:
        """Append rows (dicts or a frame whose columns are a subset of the table's)."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        if frame.empty:
            return
        frame = frame.astype(object).where(frame.notna(), None)  # NaN -> NULL
        columns = ", ".join(f'"{column}"' for column in frame.columns)
        self.con.register("_incoming", frame)
        try:
            self.con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _incoming")
        finally:
            self.con.unregister("_incoming")

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None

    # --- the run row ---------------------------------------------------------------------------

    def start_run(self, **fields: Any) -> None:
        with self.transaction():
            self.con.execute("DELETE FROM run")
            self.insert("run", [{**fields, "status": "running", "started_at": _now(), "wall_seconds": 0.0}])

    def mark(self, status: str, error: str | None = None, add_seconds: float = 0.0) -> None:
        """Set the run's status; safe to call on a damaged store (it must not hide the first error)."""
        try:
            with self.transaction():
                self.con.execute(
                    "UPDATE run SET status = ?, error = ?, finished_at = ?, wall_seconds = coalesce(wall_seconds, 0) + ?",
                    [status, error, _now(), add_seconds],
                )
        except StoreError:
            pass

    def run_info(self) -> dict[str, Any]:
        rows = self.query("SELECT * FROM run")
        return rows.iloc[0].to_dict() if len(rows) else {}

    def last_committed_step(self) -> int:
        """-1 when no step is committed yet."""
        value = self.scalar("SELECT max(step) FROM steps")
        return -1 if value is None else int(value)


def _store_error(path: Path, error: BaseException) -> StoreError:
    text = str(error)
    if "lock" in text.lower():
        return StoreError(str(path), None, "the run database is locked by another process", "stop the other process (or close the DuckDB shell that has it open) and try again")
    if "No space left" in text or getattr(error, "errno", None) == 28:
        return StoreError(str(path), None, "the disk is full; the last step was not committed", "free disk space, then continue with: python -m simulation run --resume " + str(path.parent))
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return StoreError(str(path), None, f"cannot write the run database: {first_line}", "check the output directory is writable")
