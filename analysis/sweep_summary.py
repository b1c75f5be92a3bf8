"""A sweep's figures: per run, and per setting as the seeds' mean ± standard error.

Computed with one cross-run query (`analysis/query.py`) over the sweep's databases. Per run and
group: corr(E[d], next return) in the first and the last training-phase window (phase windows as
in `analysis/learning.py`) and its gain, the mean reward in those windows; per run: AED's decision
dispersion at the first and last measurement, and the last phase's belief text share and belief
KL. A setting is one combination of the swept keys; its seeds are its runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.query import connect

GROUP_SQL = """
WITH windowed AS (
    SELECT d.run_id, d.group_name, d.expected_decision, d.realised_return, d.reward,
           {window} AS phase_window
    FROM decisions d),
bounds AS (SELECT run_id, min(phase_window) AS first_window, max(phase_window) AS last_window FROM windowed GROUP BY run_id)
SELECT w.run_id, w.group_name,
       corr(expected_decision, realised_return) FILTER (WHERE phase_window = first_window) AS corr_first,
       corr(expected_decision, realised_return) FILTER (WHERE phase_window = last_window) AS corr_last,
       avg(reward) FILTER (WHERE phase_window = first_window) AS reward_first,
       avg(reward) FILTER (WHERE phase_window = last_window) AS reward_last
FROM windowed w JOIN bounds USING (run_id) GROUP BY ALL
"""
WINDOW_SQL = "(SELECT count(*) FROM (SELECT run_id, min(step) AS step FROM training GROUP BY run_id, phase) p WHERE p.run_id = d.run_id AND p.step < d.step)"
AED_SQL = """
SELECT run_id, arg_min(aed_decision, phase) AS aed_first, arg_max(aed_decision, phase) AS aed_last FROM aed GROUP BY run_id
"""
TRAINING_SQL = """
SELECT run_id, arg_max(text_share, phase) AS text_share, arg_max(belief_kl, phase) AS belief_kl
FROM (SELECT run_id, phase, avg(belief_text_share) AS text_share, avg(belief_kl) AS belief_kl FROM training GROUP BY ALL) GROUP BY run_id
"""
RUN_METRICS = ["aed_first", "aed_last", "text_share", "belief_kl"]
GROUP_METRICS = ["corr_first", "corr_last", "corr_gain", "reward_first", "reward_last"]


def sweep_figures(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(per run and group, per setting and group as mean ± s.e. over seeds, the setting columns)."""
    con = connect([folder])
    try:
        views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        runs = con.execute("SELECT * FROM runs").df()
        settings = [column for column in runs.columns if column not in ("run_id", "run_key", "path", "status", "seed")]
        groups = con.execute(GROUP_SQL.format(window=WINDOW_SQL if "training" in views else "0")).df() if "decisions" in views else pd.DataFrame()
        per_run = runs[["run_id", "run_key", "seed", *settings]]
        for sql, view in ((AED_SQL, "aed"), (TRAINING_SQL, "training")):
            if view in views:
                per_run = per_run.merge(con.execute(sql).df(), on="run_id", how="left")
    finally:
        con.close()
    for column in RUN_METRICS:
        if column not in per_run:
            per_run[column] = np.nan
    if groups.empty:
        return per_run, pd.DataFrame(), settings
    groups["corr_gain"] = groups["corr_last"] - groups["corr_first"]
    per_group = per_run.merge(groups, on="run_id").sort_values(["run_key", "group_name"])
    keys = settings + ["group_name"]
    summary = per_group.groupby(keys, dropna=False).agg(
        seeds=("seed", "nunique"), **{f"{metric}_mean": (metric, "mean") for metric in GROUP_METRICS + RUN_METRICS},
        **{f"{metric}_se": (metric, _se) for metric in GROUP_METRICS + RUN_METRICS}).reset_index()
    return per_group, summary, settings


def _se(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else np.nan


def mean_se_table(summary: pd.DataFrame, settings: list[str]) -> pd.DataFrame:
    """The summary with each metric as one 'mean ± s.e.' text column."""
    table = summary[settings + ["group_name", "seeds"]].copy()
    for metric in GROUP_METRICS + RUN_METRICS:
        mean, se = summary[f"{metric}_mean"], summary[f"{metric}_se"]
        table[metric] = [("" if np.isnan(m) else f"{m:+.3f}" + ("" if np.isnan(s) else f" ± {s:.3f}")) for m, s in zip(mean, se, strict=True)]
    return table
