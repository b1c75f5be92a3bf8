"""One SQL query over many runs: every run's tables as views carrying `run_id` and its settings.

    from analysis.query import query
    query("SELECT seed, group_name, corr(decision_depth, realised_return) FROM decisions GROUP BY ALL",
          "runs/sweeps/base")

Each run database is `ATTACH`ed read-only into an in-memory DuckDB; nothing is copied. For every
table name that any run has, a view of that name is the `UNION ALL BY NAME` of the runs' tables,
each row prefixed with `run_id`, `seed` (the run's master seed) and the run's swept settings, one
column per key with its dots as underscores (`training.trust` -> `training_trust`). Where a table
already has a column of that name (`agents.seed` is each agent's own seed), the setting is named
`run_<name>` in that view. A view `runs` has one row per run: `run_id`, `run_key`, `path`,
`status` and the settings. A sweep folder stands for all of its runs that have a database; a run
still being written cannot be attached (DuckDB locks it) and is named in a one-line error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from analysis.rundb import open_run_db, resolve_run_db
from core.errors import UserError
from core.overrides import parse_value, split_override
from core.store import RUN_DB_FILE
from core.sweep_store import SweepManifest, is_sweep_dir

OWN_KEYS = ("run.seed", "run.name", "run.output_dir")  # said by `seed` and `path`, not as settings


@dataclass(frozen=True)
class RunRef:
    database: Path
    run_key: str
    settings: dict  # column name -> value


def column_name(key: str) -> str:
    return key.replace(".", "_").replace("[", "_").replace("]", "")


def _scalar(value):
    return value if isinstance(value, (bool, int, float, str)) or value is None else json.dumps(value)


def resolve_runs(paths: list[str | Path]) -> list[RunRef]:
    """The runs behind `paths`: run folders, run.duckdb files and sweep folders (all their started runs)."""
    refs: list[RunRef] = []
    for path in paths:
        if is_sweep_dir(path):
            manifest = SweepManifest(path)
            for row in manifest.runs():
                database = Path(row["path"]) / RUN_DB_FILE
                if not database.is_file():
                    database = Path(path) / "runs" / row["run_key"] / RUN_DB_FILE  # the folder was moved
                if database.is_file():
                    settings = {column_name(key): _scalar(parse_value(value)) for key, value in json.loads(row["settings"]).items()}
                    refs.append(RunRef(database, row["run_key"], {"seed": int(row["seed"]), **settings}))
        else:
            database = resolve_run_db(path)
            refs.append(RunRef(database, database.parent.name, _run_settings(database)))
    if not refs:
        raise UserError(", ".join(map(str, paths)) or None, None, "no run database found", "pass run folders or a sweep folder with finished or running runs")
    return refs


def _run_settings(database: Path) -> dict:
    """A lone run's settings: its master seed and its `--set` overrides."""
    with open_run_db(database) as con:
        seed, overrides = con.execute("SELECT master_seed, overrides FROM run").fetchone()
    settings = {"seed": int(seed)}
    for pair in json.loads(overrides or "[]"):
        key, value = split_override(pair, str(database))
        if key not in OWN_KEYS:
            settings[column_name(key)] = _scalar(parse_value(value))
    return settings


def connect(paths: list[str | Path]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with every run behind `paths` attached and the cross-run views made."""
    refs = resolve_runs(paths)
    con = duckdb.connect()
    tables: dict[str, list[tuple[str, str, RunRef, list[str]]]] = {}
    runs = []
    for index, ref in enumerate(refs):
        alias = f"run_{index}"
        try:
            con.execute(f"ATTACH '{_quoted(ref.database)}' AS {alias} (READ_ONLY)")
        except duckdb.Error as error:
            raise UserError(str(ref.database), None, f"cannot attach it read-only ({str(error).splitlines()[0][:120]})",
                            "wait until its run ends (a running run locks its database), or query a copy") from None
        run_id, status = con.execute(f"SELECT run_id, status FROM {alias}.run").fetchone()
        runs.append({"run_id": run_id, "run_key": ref.run_key, "path": str(ref.database.parent), "status": status, **ref.settings})
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [alias]).fetchall():
            columns = [row[0] for row in con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ?",
                                                     [alias, table]).fetchall()]
            tables.setdefault(table, []).append((alias, run_id, ref, columns))
    frame = pd.DataFrame(runs)
    con.register("runs_frame", frame)
    con.execute("CREATE TEMP TABLE runs AS SELECT * FROM runs_frame")
    con.unregister("runs_frame")
    setting_columns = [column for column in frame.columns if column not in ("run_id", "run_key", "path", "status")]
    for table, parts in tables.items():
        if table == "runs":
            continue
        selects = []
        for alias, run_id, ref, columns in parts:
            prefix = [f"'{_quoted(run_id)}' AS run_id"] + [
                f"r.{_ident(column)} AS {_ident(column if column not in columns else 'run_' + column)}" for column in setting_columns if column in ref.settings]
            own = "t.* EXCLUDE (run_id)" if "run_id" in columns else "t.*"
            selects.append(f"SELECT {', '.join(prefix)}, {own} FROM {alias}.main.{_ident(table)} t, runs r WHERE r.run_id = '{_quoted(run_id)}'")
        con.execute(f"CREATE TEMP VIEW {_ident(table)} AS " + " UNION ALL BY NAME ".join(selects))
    return con


def query(sql: str, *paths: str | Path) -> pd.DataFrame:
    """The result of `sql` over the runs behind `paths`, as a DataFrame."""
    con = connect(list(paths))
    try:
        return con.execute(sql).df()
    except duckdb.Error as error:
        raise UserError("query", None, f"{type(error).__name__}: {str(error).splitlines()[0]}",
                        "check the SQL; the tables are in docs/schema.md, and every view has run_id, seed and the swept settings") from None
    finally:
        con.close()


def write_query(sql: str, paths: list[str | Path], out: str | Path | None, max_rows: int = 40) -> str:
    """`python -m simulation query`: the result as a table (a string), or written to `out` (.csv or
    .parquet) by DuckDB itself; returns what to print."""
    con = connect(paths)
    try:
        try:
            relation = con.sql(sql)
        except duckdb.Error as error:
            raise UserError("query", None, f"{type(error).__name__}: {str(error).splitlines()[0]}",
                            "check the SQL; the tables are in docs/schema.md, and every view has run_id, seed and the swept settings") from None
        if relation is None:
            raise UserError("query", None, "the statement returns no rows", "give a SELECT (the runs are attached read-only)")
        if out is None:
            return str(relation.to_df().to_string(index=False, max_rows=max_rows)) if relation.shape[0] else "(no rows)"
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            relation.write_csv(str(out))
        elif out.suffix == ".parquet":
            relation.write_parquet(str(out))
        else:
            raise UserError(str(out), "--out", "unknown output format", "end the file name in .csv or .parquet")
        return f"{relation.shape[0]} rows written to {out}"
    finally:
        con.close()


def _quoted(text) -> str:
    return str(text).replace("'", "''")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
