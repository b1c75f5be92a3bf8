"""Compare two runs table by table: the check behind "same seed, same tables" and resume.

Wall-clock columns (latencies, timings, commit times) and paths that contain the run directory
are left out; every other column the two runs share must be equal, row for row, in a canonical
order. Columns only one of them has (a run made by another version of the engine) are named in
the detail and do not count against them.

    python -m simulation compare runs/base runs/base-2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.rundb import open_run_db, resolve_run_db

# table -> (sort key, columns that measure time or name the run's own folder)
TABLES: dict[str, tuple[list[str], set[str]]] = {
    "agents": (["agent_id"], set()),
    "market": (["step", "asset"], set()),
    "decisions": (["step", "agent_id", "asset"], {"latency_s"}),
    "factors_served": (["step", "agent_id", "asset", "category", "name"], set()),
    "steps": (["step"], {"committed_at", "wall_seconds", "decisions_per_second", "tokens_per_second"}),
    "events": (["step", "kind"], set()),
    "training": (["phase", "agent_id"], {"seconds", "adapter_path"}),
    "aed": (["phase"], set()),
    "aed_agents": (["phase", "agent_id"], set()),
    "aed_probes": (["phase", "probe", "agent_id"], set()),
    "factor_data": (["date", "asset", "category", "name"], set()),
    "price_data": (["asset", "date"], set()),
}


@dataclass(frozen=True)
class TableComparison:
    table: str
    rows: tuple[int, int]
    identical: bool
    detail: str


def load_table(database: Path, table: str) -> pd.DataFrame:
    order, ignored = TABLES[table]
    with open_run_db(database) as con:
        frame = con.execute(f"SELECT * FROM {table}").df()
    frame = frame.drop(columns=[c for c in ignored if c in frame.columns])
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def compare_runs(first: str | Path, second: str | Path) -> list[TableComparison]:
    """Each table of two runs (run directories or .duckdb files), compared."""
    first, second = resolve_run_db(first), resolve_run_db(second)
    results = []
    for table in TABLES:
        a, b = load_table(first, table), load_table(second, table)
        if len(a) != len(b):
            results.append(TableComparison(table, (len(a), len(b)), False, f"{len(a)} rows vs {len(b)}"))
            continue
        shared = [column for column in a.columns if column in b.columns]
        differing = [column for column in shared if not _same(a[column], b[column])]
        detail = "identical" if not differing else "differs in " + ", ".join(differing)
        only = [f"{column} (first only)" for column in a.columns if column not in b.columns] + [f"{column} (second only)" for column in b.columns if column not in a.columns]
        if only:
            detail += "; columns " + ", ".join(only)
        results.append(TableComparison(table, (len(a), len(b)), not differing, detail))
    return results


def _same(a: pd.Series, b: pd.Series) -> bool:
    if a.isna().tolist() != b.isna().tolist():
        return False
    kept = a.notna()
    return [_plain(v) for v in a[kept]] == [_plain(v) for v in b[kept]]


def _plain(value):
    """Lists come back from DuckDB as numpy arrays; compare them as lists."""
    return value.tolist() if hasattr(value, "tolist") else value
