"""The report's figures, each built from plain DataFrames and returned as a matplotlib Figure.

Figures are made with the object API and rendered by the Agg canvas, so no GUI backend or global
pyplot state is involved. Runs keep one colour across figures (`run_colours`); a dashed vertical
line marks each training phase, drawn between the phase's step and the next.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

WIDTH_IN = 9.0
DPI = 100
PANELS_PER_ROW = 2
MAX_AGENT_LABELS = 40  # above this, the heatmap labels groups instead of single agents
MAX_HEATMAP_HEIGHT_IN = 8.0
PHASE_LINE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def to_png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def run_colours(labels: Sequence[str]) -> dict[str, str]:
    """One colour per run, fixed by its place in the report, for every figure that overlays runs."""
    return {label: f"C{index % 10}" for index, label in enumerate(labels)}


def price_figure(
    asset: str, paths: Mapping[str, pd.DataFrame], colours: Mapping[str, str]
) -> Figure:
    """Simulated and fundamental price over steps, per run (columns step, price, ...)."""
    figure = Figure(figsize=(WIDTH_IN, 3.8), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for label, path in paths.items():
        colour = colours[label]
        axes.plot(path["step"], path["price"], color=colour, label=f"{label}: simulated price")
        axes.plot(
            path["step"],
            path["fundamental_price"],
            color=colour,
            linestyle="--",
            alpha=0.7,
            label=f"{label}: fundamental price",
        )
    axes.set(
        title=f"{asset}: simulated vs fundamental price",
        xlabel="step (trading day)",
        ylabel="price (currency units)",
    )
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def decision_heatmap(title: str, decisions: pd.DataFrame, training_steps: Sequence[int]) -> Figure:
    """decision_depth per agent (rows, by group) and step (columns); red sells, blue buys."""
    agents = decisions.drop_duplicates("agent_id").sort_values(["group_name", "agent_id"])
    matrix = decisions.pivot_table(index="agent_id", columns="step", values="decision_depth")
    matrix = matrix.reindex(agents["agent_id"])
    steps = matrix.columns.to_numpy()
    n_agents = len(agents)
    figure = Figure(
        figsize=(WIDTH_IN, min(MAX_HEATMAP_HEIGHT_IN, 1.6 + 0.28 * n_agents)),
        dpi=DPI,
        layout="constrained",
    )
    axes = figure.add_subplot()
    image = axes.imshow(
        matrix.to_numpy(),
        aspect="auto",
        interpolation="nearest",
        cmap="RdBu",
        vmin=-10,
        vmax=10,
        extent=(steps.min() - 0.5, steps.max() + 0.5, n_agents - 0.5, -0.5),
    )
    groups = agents["group_name"].to_numpy()
    if n_agents <= MAX_AGENT_LABELS:
        names = [f"{g} #{a}" for g, a in zip(groups, agents["agent_id"], strict=True)]
        axes.set_yticks(range(n_agents), names)
    else:
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        ends = np.r_[starts[1:], n_agents]
        axes.set_yticks((starts + ends - 1) / 2, groups[starts])
    for boundary in np.flatnonzero(groups[1:] != groups[:-1]) + 0.5:
        axes.axhline(boundary, color="black", linewidth=1.0)
    _mark_phases(axes, training_steps)
    if len(training_steps):
        title += " (dashed: training phases)"
    axes.set(title=title, xlabel="step (trading day)", ylabel="agent (by group)")
    figure.colorbar(image, ax=axes, label="decision_depth (-10 sell, +10 buy)")
    return figure


def aed_figure(aed: Mapping[str, pd.DataFrame], colours: Mapping[str, str]) -> Figure:
    """AED_decision and AED_belief against training phase, one line per run."""
    figure = Figure(figsize=(WIDTH_IN, 3.6), dpi=DPI, layout="constrained")
    decision_axes, belief_axes = figure.subplots(1, 2)
    for label, rows in aed.items():
        colour = colours[label]
        decision_axes.plot(rows["phase"], rows["aed_decision"], "o-", color=colour, label=label)
        belief_axes.plot(rows["phase"], rows["aed_belief"], "o-", color=colour, label=label)
    decision_axes.set(
        title="AED of decisions",
        xlabel="phase (0 = before training)",
        ylabel="AED_decision (0 = identical, 1 = max)",
    )
    belief_axes.set(
        title="AED of beliefs",
        xlabel="phase (0 = before training)",
        ylabel="AED_belief (mean cosine distance)",
    )
    for axes in (decision_axes, belief_axes):
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def reward_figure(
    curves: Mapping[str, pd.DataFrame], training_steps: Mapping[str, Sequence[int]]
) -> Figure:
    """Mean cumulative reward per group over steps, one panel per run (columns step, group_name,
    cumulative_reward); a group keeps its colour across panels and one legend serves them all."""
    groups = sorted({group for curve in curves.values() for group in curve["group_name"]})
    colour_of = {group: f"C{i % 10}" for i, group in enumerate(groups)}
    n_columns = min(len(curves), PANELS_PER_ROW)
    n_rows = -(-len(curves) // n_columns)
    figure = Figure(figsize=(WIDTH_IN, 0.6 + 3.4 * n_rows), dpi=DPI, layout="constrained")
    figure.suptitle("Cumulative reward by group (mean agent of the group)")
    panels = figure.subplots(n_rows, n_columns, sharey=True, squeeze=False).ravel()
    for axes in panels[len(curves) :]:
        axes.set_visible(False)
    for axes, (label, curve) in zip(panels, curves.items(), strict=False):
        for group, rows in curve.groupby("group_name"):
            axes.plot(rows["step"], rows["cumulative_reward"], color=colour_of[group])
        _mark_phases(axes, training_steps[label])
        axes.axhline(0.0, color="black", linewidth=0.6)
        axes.set(title=label, xlabel="step (trading day)")
        axes.grid(alpha=0.3)
    for axes in panels[::n_columns]:
        axes.set_ylabel("cumulative reward\n(return x decision_depth)")
    handles = [Line2D([], [], color=colour) for colour in colour_of.values()]
    labels = list(colour_of)
    if any(len(steps) for steps in training_steps.values()):
        handles.append(Line2D([], [], **PHASE_LINE))
        labels.append("training phase")
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize="small"
    )
    return figure


def _mark_phases(axes: Axes, training_steps: Sequence[int]) -> None:
    """A dashed line after each training phase's last step (the phase runs between two steps)."""
    for step in training_steps:
        axes.axvline(step + 0.5, **PHASE_LINE)


def cumulative_pay_figure(title: str, daily_pay: pd.DataFrame, order: Sequence[str]) -> Figure:
    """Cumulative pay of each strategy over its evaluation dates (columns strategy, date, pay:
    the day's pay, averaged over the strategy's agents and seeds)."""
    figure = Figure(figsize=(WIDTH_IN, 3.6), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    strategies = [name for name in order if name in set(daily_pay["strategy"])]
    strategies += sorted(set(daily_pay["strategy"]) - set(strategies))
    for index, strategy in enumerate(strategies):
        rows = daily_pay[daily_pay["strategy"] == strategy].sort_values("date")
        axes.plot(pd.to_datetime(rows["date"]), rows["pay"].cumsum(), color=f"C{index % 10}", label=strategy,
                  linewidth=2.0 if strategy == "trained" else 1.2)
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set(title=title, xlabel="evaluation date", ylabel="cumulative pay\n(return x decision_depth)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncols=min(len(strategies), 5))
    return figure
