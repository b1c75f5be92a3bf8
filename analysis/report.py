"""One self-contained HTML report of one or several runs, computed from their DuckDB files alone.

Every database is opened read-only. The page has inline CSS and its figures embedded as base64
PNG, so it can be mailed or archived as one file. Several runs are shown side by side: figures
overlay them where they share axes, tables get one column or one block per run. A table a run
has not written yet (no training phase, no AED measurement) reads "not measured in this run".
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.evaluation import STRATEGY_ORDER, OutOfSample, load_out_of_sample
from analysis.learning import (
    cumulative_reward_by_group,
    learning_metrics,
    load_decisions,
    training_steps,
)
from analysis.plots import (
    aed_figure,
    cumulative_pay_figure,
    decision_heatmap,
    price_figure,
    reward_figure,
    run_colours,
    to_png,
)
from analysis.query import resolve_runs
from analysis.rundb import has_rows, open_run_db, resolve_run_db
from analysis.stylized_facts import (
    SP500_LABEL,
    sp500_sample,
    stylized_facts,
    stylized_facts_table,
)
from analysis.sweep_summary import mean_se_table, sweep_figures
from core.errors import UserError
from core.sweep_store import is_sweep_dir

REPORT_FILE = "report.html"
NOT_MEASURED = "not measured in this run"
NO_STEPS = "no trading step committed yet"
BELIEF_CHARS = 600  # longer beliefs are cut in the examples table
NOTES = {
    "sweep": "Per setting and group over its seeds (its runs): corr(E[d], next return) in the first and "
    "last training-phase window and its gain, the mean reward in those windows, AED's decision "
    "dispersion at the first and last measurement, the last phase's belief text share and KL. "
    "Below: the same per run.",
    "aed": "Drift: mean over agents of the change since the previous measurement (decision in "
    "decision_depth units, belief as cosine distance).",
    "learning": "Per group and training-phase window; cumulative reward is the group's average "
    "agent.",
    "facts": "Simulated returns of each run beside the real S&P 500 daily returns.",
    "training": "Per phase; epochs, held-back pay (exact expected standardised pay on the phase's "
    "held-back states, before and after), KLs, text share and reward are means over agents; samples "
    "and seconds are sums.",
    "prompts": "Each agent's adopted strategy prompt after every APO phase with its replay and held-back pay, "
    "how many rewrites each phase wrote, rejected and adopted, and the tokens and seconds spent on "
    "critiques, rewrites and replays.",
    "evaluation": "From `python -m simulation evaluate RUN` (evaluation.duckdb beside the run): the "
    "trained agents, frozen, on dates the run never traded, against the same agents untrained, "
    "buy-and-hold, 20-day momentum and each agent's first factor, on exactly the same dates and "
    "returns. Brackets: 95 % moving-block bootstrap intervals (blocks of 5 days; decisions of one "
    "day are averaged first). Sharpe: annualised, of the position decision / 10, with its standard "
    "error; never read it without its days.",
    "beliefs": f"First and last step, first two agents of each group, first asset; beliefs cut at "
    f"{BELIEF_CHARS} characters.",
}
SECTIONS = {
    "sweep": "Sweep: each setting's seeds, mean ± standard error",
    "summary": "Run summary",
    "price": "Price vs fundamental price",
    "decisions": "Decisions of every agent",
    "aed": "AED across training phases",
    "reward": "Reward by group",
    "learning": "Learning metrics by phase",
    "facts": "Stylized facts",
    "training": "Training phases",
    "beliefs": "Example beliefs",
    "prompts": "Prompt optimisation (APO)",
    "evaluation": "Out of sample: agents against baselines",
}

TRAINING_SQL = """
SELECT phase, min(step) AS step, count(*) AS agents, sum(samples) AS samples,
       avg(epochs) AS epochs, avg(kept_epoch) AS kept_epoch, count(*) FILTER (WHERE kept_epoch > 0) AS adopted,
       avg(heldout_pay_before) AS heldout_pay_before, avg(heldout_pay_after) AS heldout_pay_after,
       avg(decision_kl) AS decision_kl, avg(belief_kl) AS belief_kl,
       avg(belief_text_share) AS belief_text_share, avg(reward_mean) AS reward_mean, sum(seconds) AS seconds
FROM training GROUP BY phase ORDER BY phase
"""
AED_SQL = """
SELECT a.phase, a.step, a.n_probes, a.n_agents, a.aed_decision, a.aed_belief,
       avg(g.decision_drift) AS mean_decision_drift, avg(g.belief_drift) AS mean_belief_drift
FROM aed a LEFT JOIN aed_agents g USING (phase)
GROUP BY ALL ORDER BY a.phase
"""
BELIEFS_SQL = """
WITH span AS (SELECT min(step) AS first_step, max(step) AS last_step, min(asset) AS asset
              FROM decisions),
     shown AS (SELECT group_name, agent_id FROM agents
               QUALIFY row_number() OVER (PARTITION BY group_name ORDER BY agent_id) <= 2)
SELECT s.group_name, d.step, d.agent_id, d.asset, d.decision_depth, d.belief
FROM decisions d JOIN shown s USING (agent_id), span
WHERE d.step IN (span.first_step, span.last_step) AND d.asset = span.asset
ORDER BY s.group_name, d.step, d.agent_id
"""

PROMPTS_SQL = """
SELECT phase, agent_id, version, round(replay_score, 6) AS replay_pay, round(heldout_score, 6) AS heldout_pay, reason, text
FROM prompts WHERE adopted ORDER BY agent_id, phase
"""
PROMPT_COUNTS_SQL = """
SELECT phase, count(*) FILTER (WHERE parent_version IS NOT NULL) AS rewrites,
       count(*) FILTER (WHERE reason LIKE 'rejected%') AS rejected,
       count(*) FILTER (WHERE adopted AND reason LIKE 'adopted%') AS adopted
FROM prompts WHERE phase > 0 GROUP BY phase ORDER BY phase
"""
USAGE_SQL = """
SELECT phase, purpose, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, round(sum(seconds), 1) AS seconds
FROM apo_usage GROUP BY ALL ORDER BY phase, purpose
"""

CSS = """
body { font-family: system-ui, sans-serif; color: #222; margin: 2em auto; padding: 0 1em;
       max-width: 1900px; line-height: 1.4; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; }
table.text td { text-align: left; max-width: 60em; }
.runs { display: flex; flex-wrap: wrap; gap: 2em; }
.run { flex: 1 1 40em; min-width: 0; overflow-x: auto; }
img { max-width: 100%; height: auto; }
.note { color: #666; font-style: italic; }
"""


@dataclass(frozen=True)
class RunData:
    """What the report needs from one run database; None where the run has no such rows."""

    label: str
    path: Path
    run: pd.Series
    agents: pd.DataFrame
    market: pd.DataFrame
    decisions: pd.DataFrame  # analysis.learning.load_decisions
    fallback_rate: float  # share of decisions that fell back to 0; NaN before the first step
    training_steps: np.ndarray
    training: pd.DataFrame | None
    aed: pd.DataFrame | None
    beliefs: pd.DataFrame
    prompts: pd.DataFrame | None = None      # APO runs: the adopted prompts per phase
    prompt_counts: pd.DataFrame | None = None
    apo_usage: pd.DataFrame | None = None
    out_of_sample: OutOfSample | None = None  # the run's evaluation.duckdb, if it has been evaluated


def main_report(run_paths: list[str], out: str | None) -> Path:
    """`python -m simulation report RUN [RUN ...]`: each RUN is a run directory or its .duckdb
    file; the report goes to `out`, by default `report.html` beside the first run's database."""
    if not run_paths:
        raise UserError(
            file=None,
            key=None,
            problem="no run given",
            fix="python -m simulation report RUN_DIR [RUN_DIR ...]",
        )
    sweeps = [Path(path) for path in run_paths if is_sweep_dir(path)]
    db_paths = [ref.database for ref in resolve_runs(sweeps)] if sweeps else []
    db_paths += [resolve_run_db(path) for path in run_paths if not is_sweep_dir(path)]
    default = sweeps[0] / REPORT_FILE if sweeps else db_paths[0].parent / REPORT_FILE
    return write_report(db_paths, Path(out) if out else default, sweeps)


def write_report(db_paths: list[Path], out: Path, sweeps: list[Path] | None = None) -> Path:
    """Write the HTML report of the runs in `db_paths` (and a summary of each sweep in `sweeps`,
    whose runs are among them) to `out` and return `out`."""
    runs = _unique_labels([load_run(path) for path in db_paths])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(runs, sweeps or []), encoding="utf-8")
    return out


def load_run(db_path: Path) -> RunData:
    """Read everything the report shows from one run database."""
    with open_run_db(db_path) as con:
        run = con.execute("SELECT * FROM run").df()
        if run.empty:
            raise UserError(
                file=str(db_path),
                key="run",
                problem="the run table is empty",
                fix="pass a database written by `python -m simulation run`",
            )
        return RunData(
            label=str(run["name"].iloc[0]),
            path=db_path,
            run=run.iloc[0],
            agents=con.execute("SELECT agent_id, group_name FROM agents ORDER BY agent_id").df(),
            market=con.execute(
                "SELECT step, asset, price, fundamental_price, return, volume FROM market"
                " ORDER BY asset, step"
            ).df(),
            decisions=load_decisions(con),
            fallback_rate=con.execute("SELECT avg(fallback::DOUBLE) FROM decisions").df().iat[0, 0],
            training_steps=training_steps(con),
            training=con.execute(TRAINING_SQL).df() if has_rows(con, "training") else None,
            aed=con.execute(AED_SQL).df() if has_rows(con, "aed") else None,
            beliefs=con.execute(BELIEFS_SQL).df(),
            prompts=con.execute(PROMPTS_SQL).df() if has_rows(con, "prompts") else None,
            prompt_counts=con.execute(PROMPT_COUNTS_SQL).df() if has_rows(con, "prompts") else None,
            apo_usage=con.execute(USAGE_SQL).df() if has_rows(con, "apo_usage") else None,
            out_of_sample=load_out_of_sample(db_path.parent),
        )


def render_report(runs: list[RunData], sweeps: list[Path] | None = None) -> str:
    """The whole HTML page."""
    colours = run_colours([run.label for run in runs])
    contents = {"sweep": "".join(_sweep(folder) for folder in sweeps)} if sweeps else {}
    contents |= {
        "summary": _table(_summary(runs)),
        "price": _price_figures(runs, colours),
        "decisions": _per_run(runs, _heatmaps),
        "aed": _aed_figure(runs, colours) + _per_run(runs, lambda run: _measured(run.aed)),
        "reward": _rewards(runs),
        "learning": _per_run(runs, _learning),
        "facts": _table(_facts(runs)),
        "training": _per_run(runs, lambda run: _measured(run.training)),
        "beliefs": _per_run(runs, _beliefs),
    }
    if any(run.prompts is not None for run in runs):
        contents["prompts"] = _per_run(runs, _prompts)
    if any(run.out_of_sample is not None for run in runs):
        contents["evaluation"] = _per_run(runs, _out_of_sample)
    body = "".join(
        f"<section><h2>{html.escape(SECTIONS[key])}</h2>"
        f"{_note(NOTES[key]) if key in NOTES else ''}{content}</section>"
        for key, content in contents.items()
    )
    names = html.escape(", ".join(run.label for run in runs))
    sources = html.escape(", ".join(str(run.path) for run in runs))
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Report: {names}</title><style>{CSS}</style></head><body>"
        f"<h1>Run report: {names}</h1><p class='note'>Made {made} from {sources}.</p>"
        f"{body}</body></html>"
    )


def _sweep(folder: Path) -> str:
    per_run, summary, settings = sweep_figures(folder)
    if summary.empty:
        return f"<h3>{html.escape(str(folder))}</h3>" + _note(NO_STEPS)
    shown = per_run.drop(columns=["run_id"]).round(4)
    return (f"<h3>{html.escape(str(folder))}</h3>" + _table(mean_se_table(summary, settings))
            + "<h4>Per run</h4>" + _table(shown))


def _summary(runs: list[RunData]) -> pd.DataFrame:
    return (
        pd.DataFrame({run.label: _summary_column(run) for run in runs})
        .rename_axis("")
        .reset_index()
    )


def _summary_column(run: RunData) -> dict:
    info = run.run
    status = info["status"] if pd.isna(info["error"]) else f"{info['status']}: {info['error']}"
    groups = ", ".join(sorted(set(run.agents["group_name"])))
    return {
        "run id": info["run_id"],
        "scenario": info["scenario_path"],
        "model": info["model_id"],
        "device / dtype": f"{info['device']} / {info['dtype']}",
        "master seed": info["master_seed"],
        "agents (groups)": f"{len(run.agents)} ({groups})",
        "steps committed / planned": f"{run.market['step'].nunique()} / {info['steps_planned']}",
        "status": status,
        "started (UTC)": info["started_at"],
        "wall time (s)": _number(info["wall_seconds"]),
        "fallback rate (%)": _number(100 * run.fallback_rate),
        "training phases": len(run.training_steps),
    }


def _price_figures(runs: list[RunData], colours: dict[str, str]) -> str:
    assets = sorted({asset for run in runs for asset in run.market["asset"]})
    figures = []
    for asset in assets:
        paths = {run.label: run.market[run.market["asset"] == asset] for run in runs}
        traded = {label: path for label, path in paths.items() if not path.empty}
        figures.append(_img(price_figure(asset, traded, colours)))
    return "".join(figures) if figures else _note(NO_STEPS)


def _heatmaps(run: RunData) -> str:
    if run.decisions.empty:
        return _note(NO_STEPS)
    assets = sorted(run.decisions["asset"].unique())
    return "".join(
        _img(
            decision_heatmap(
                f"{run.label}: decision_depth" + (f" on {asset}" if len(assets) > 1 else ""),
                run.decisions[run.decisions["asset"] == asset],
                run.training_steps,
            )
        )
        for asset in assets
    )


def _aed_figure(runs: list[RunData], colours: dict[str, str]) -> str:
    measured = {run.label: run.aed for run in runs if run.aed is not None}
    return _img(aed_figure(measured, colours)) if measured else ""


def _rewards(runs: list[RunData]) -> str:
    traded = [run for run in runs if not run.decisions.empty]
    if not traded:
        return _note(NO_STEPS)
    return _img(
        reward_figure(
            {run.label: cumulative_reward_by_group(run.decisions) for run in traded},
            {run.label: run.training_steps for run in traded},
        )
    )


def _learning(run: RunData) -> str:
    if run.decisions.empty:
        return _note(NO_STEPS)
    return _table(learning_metrics(run.decisions, level="group", by_phase=True))


def _facts(runs: list[RunData]) -> pd.DataFrame:
    returns, volume = sp500_sample()
    facts = {SP500_LABEL: stylized_facts(returns, volume)}
    for run in runs:
        several_assets = run.market["asset"].nunique() > 1
        for asset, rows in run.market.groupby("asset"):
            label = f"{run.label} - {asset}" if several_assets else run.label
            facts[label] = stylized_facts(rows["return"], rows["volume"])
    return stylized_facts_table(facts).rename_axis("statistic").reset_index()


def _prompts(run: RunData) -> str:
    if run.prompts is None:
        return _note(NOT_MEASURED)
    return (_table(run.prompts, "text") + "<h4>Rewrites per phase</h4>" + _measured(run.prompt_counts)
            + "<h4>Tokens and seconds per phase</h4>" + _measured(run.apo_usage))


def _out_of_sample(run: RunData) -> str:
    evaluation = run.out_of_sample
    if evaluation is None:
        return _note("not evaluated: python -m simulation evaluate RUN")
    info = evaluation.info
    sampled = f", every {info['every']}th trading date" if info.get("every", 1) > 1 else ""
    where = f"{info['first_date'].date()} .. {info['last_date'].date()}: {info['days']} decision days{sampled}"
    flag = " IN-SAMPLE (dates the run traded on)" if info["in_sample"] else " out of sample"
    caption = (f"Phase {info['phase']} adapters, {where},{flag}; {info['seeds']} seed(s), impact {info['impact']}, "
               f"data {info['data']}.")
    title = f"{run.label}: cumulative pay, {info['first_date'].date()} .. {info['last_date'].date()}"
    return (f"<p>{html.escape(caption)}</p>" + _table(evaluation.table)
            + _img(cumulative_pay_figure(title, evaluation.daily_pay, STRATEGY_ORDER)))


def _beliefs(run: RunData) -> str:
    if run.beliefs.empty:
        return _note(NO_STEPS)
    cut = (
        run.beliefs["belief"]
        .fillna("")
        .map(lambda text: text if len(text) <= BELIEF_CHARS else text[:BELIEF_CHARS] + " [...]")
    )
    return _table(run.beliefs.assign(belief=cut), css_class="text")


def _per_run(runs: list[RunData], render: Callable[[RunData], str]) -> str:
    blocks = "".join(
        f'<div class="run"><h3>{html.escape(run.label)}</h3>{render(run)}</div>' for run in runs
    )
    return f'<div class="runs">{blocks}</div>'


def _table(frame: pd.DataFrame, css_class: str = "") -> str:
    return frame.to_html(
        index=False, border=0, classes=css_class or None, na_rep="-", float_format=_number
    )


def _measured(frame: pd.DataFrame | None) -> str:
    return _table(frame) if frame is not None else _note(NOT_MEASURED)


def _number(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.4g}"


def _img(figure: Figure) -> str:
    title = figure.get_suptitle() or figure.axes[0].get_title()
    data = base64.b64encode(to_png(figure)).decode("ascii")
    return f'<p><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"></p>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _unique_labels(runs: list[RunData]) -> list[RunData]:
    """Runs that share a name get " (2)", " (3)", ... so every column and legend entry differs."""
    seen: dict[str, int] = {}
    labelled = []
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        label = run.label if seen[run.label] == 1 else f"{run.label} ({seen[run.label]})"
        labelled.append(replace(run, label=label))
    return labelled
