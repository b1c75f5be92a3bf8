"""Read-only access to a run database (`run.duckdb`, see docs/schema.md).

Analysis never writes to a run: every file is opened `read_only`, so a report can be made from a
finished run, or from a copy of a running one. Tables that a run has not written yet (no training
phase, no AED measurement) read as absent rather than as errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from core.errors import UserError
from core.store import RUN_DB_FILE


def resolve_run_db(path: str | Path) -> Path:
    """The database file of a run, given either its directory or the `.duckdb` file itself."""
    given = Path(path)
    candidate = given / RUN_DB_FILE if given.is_dir() else given
    if not candidate.is_file():
        raise UserError(
            file=str(given),
            key=None,
            problem=f"no run database here (looked for {candidate})",
            fix=f"pass a run directory that contains {RUN_DB_FILE}, or the .duckdb file itself",
        )
    return candidate


@contextmanager
def open_run_db(db: str | Path | duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to `db`; an open connection is passed through and left open."""
    if isinstance(db, duckdb.DuckDBPyConnection):
        yield db
        return
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as error:
        raise UserError(
            file=str(db),
            key=None,
            problem=f"cannot open the run database read-only ({error})",
            fix="check it is a DuckDB file; if a run still writes it, wait or copy the file first",
        ) from error
    try:
        if not has_table(con, "run"):
            raise UserError(
                file=str(db),
                key="run",
                problem="this DuckDB file has no `run` table, so it is not a run database",
                fix="pass the run.duckdb that `python -m simulation run` wrote",
            )
        yield con
    finally:
        con.close()


def has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the table exists in the database (it may still be empty)."""
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchone()
    return bool(found and found[0])


def has_rows(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the table exists and holds at least one row."""
    return (
        has_table(con, table)
        and con.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
    )
