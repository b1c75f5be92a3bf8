"""The live console: a Rich dashboard in a terminal, plain progress lines anywhere else.

`LiveConsole` redraws after every step: progress with ETA, the price path against the data's
fundamental path (a sparkline), net demand, the spread of decisions, one row per agent, the model
and device, and the training phase and AED when they happen. Without a TTY (CI, a pipe, a log
file) `PlainConsole` prints one line per step instead; both implement the model's `Observer`.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Self

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparklines_on_one_scale(series: list[list[float]], width: int = 60) -> list[str]:
    """Several series drawn against one shared y-range, so they can be compared by eye."""
    tails = [s[-width:] for s in series]
    flat = [v for s in tails for v in s]
    if not flat:
        return ["" for _ in series]
    low, high = min(flat), max(flat)
    span = (high - low) or 1.0
    return ["".join(_BLOCKS[min(int((v - low) / span * (len(_BLOCKS) - 1) + 0.5), len(_BLOCKS) - 1)] for v in s) for s in tails]


class _History:
    """What both consoles remember of the run so far."""

    def __init__(self, total_steps: int, header: dict[str, str]):
        self.total_steps, self.header = total_steps, header
        self.prices: dict[str, list[float]] = {}
        self.fundamental: dict[str, list[float]] = {}
        self.last_report = None
        self.fallbacks = 0
        self.decisions = 0
        self.phase_rows: dict[int, object] = {}
        self.phase: int | None = None
        self.aed: list[tuple[int, float, float | None]] = []
        self.events: list[str] = []
        self.started = time.perf_counter()
        self.steps_recorded = 0
        self.warnings = None  # a simulation.warnings_log.WarningsLog while a run is driven

    @property
    def warning_count(self) -> int:
        return self.warnings.count if self.warnings is not None else 0

    def record_step(self, report) -> None:
        for asset, clearing in report.clearings.items():
            self.prices.setdefault(asset, [clearing.price]).append(clearing.next_price)
            self.fundamental.setdefault(asset, [clearing.price]).append(report.fundamental_prices[asset])
        self.fallbacks += report.fallbacks
        self.decisions += len(report.decisions)
        self.steps_recorded += 1
        self.events += [f"step {report.step}: {text}" for text in report.events]
        self.last_report = report


class LiveConsole:
    """A Rich dashboard redrawn after each step (needs a terminal)."""

    def __init__(self, total_steps: int, header: dict[str, str], console: Console | None = None):
        self.console = console or Console()
        self.history = _History(total_steps, header)
        self.agents = []  # the model's agents, from the first step on
        self.progress = Progress(TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
        self.task = self.progress.add_task("run", total=total_steps)
        self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> Self:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.update(self.render())
        self.live.__exit__(*exc)

    def start_at(self, step: int) -> None:
        self.progress.update(self.task, completed=step)

    def watch_warnings(self, log) -> None:
        self.history.warnings = log

    def on_step(self, model, report) -> None:
        self.agents = list(model.agents)
        self.history.record_step(report)
        self.progress.update(self.task, completed=report.step + 1)
        self.live.update(self.render())

    def on_phase_agent(self, phase: int, row) -> None:
        self.history.phase = phase
        self.history.phase_rows[row.agent_id] = row
        self.live.update(self.render())

    def on_phase_done(self, phase: int, rows: list) -> None:
        self.history.phase_rows = {row.agent_id: row for row in rows}
        self.live.update(self.render())

    def on_aed(self, phase: int, result) -> None:
        self.history.aed.append((phase, result.aed_decision, result.aed_belief))
        self.live.update(self.render())

    def on_message(self, text: str) -> None:
        self.history.events.append(text)
        self.live.update(self.render())

    def render(self) -> Group:
        history = self.history
        header = "  ".join(f"[bold]{key}[/] {value}" for key, value in history.header.items())
        parts = [Panel(Group(Text.from_markup(header), self.progress), title="LLM investor market", border_style="cyan")]
        report = history.last_report
        if report is not None:
            market = Table.grid(padding=(0, 2))
            market.add_column(justify="right", style="bold")
            market.add_column()
            market.add_row("date", f"{report.date}  (step {report.step})")
            for asset, clearing in report.clearings.items():
                simulated, fundamental = sparklines_on_one_scale([history.prices[asset], history.fundamental[asset]])
                market.add_row(f"{asset} price", f"[green]{simulated}[/] {clearing.next_price:8.2f}")
                market.add_row("fundamental", f"[magenta]{fundamental}[/] {report.fundamental_prices[asset]:8.2f}")
                market.add_row("net demand", f"{clearing.net_demand:+.3f}   volume {clearing.volume:.3f}   return {clearing.simulated_return:+.2%}")
            spread = statistics.pstdev(report.decisions) if len(report.decisions) > 1 else 0.0
            market.add_row("decisions", f"mean {statistics.fmean(report.decisions):+.2f}  std {spread:.2f}  min {min(report.decisions):+.1f}  max {max(report.decisions):+.1f}")
            market.add_row("speed", f"{report.seconds:.1f} s/step  {len(report.decisions) / report.seconds:.2f} decisions/s  {report.completion_tokens / report.seconds:.0f} tokens/s")
            market.add_row("fallbacks", f"{history.fallbacks} of {history.decisions} decisions")
            market.add_row("warnings", f"{history.warning_count} from libraries (kept out of this screen; see the run's warnings table)")
            parts.append(Panel(market, title="market", border_style="green"))
            parts.append(self.agent_table())
        if history.phase_rows or history.aed:
            parts.append(self.learning_panel())
        if history.events:
            parts.append(Panel("\n".join(history.events[-4:]), title="events", border_style="yellow"))
        return Group(*parts)

    def agent_table(self) -> Table:
        table = Table(title="agents", expand=True, title_justify="left")
        for column, style in (("id", "dim"), ("group", ""), ("sees", "dim"), ("last decision", ""), ("cum. reward", ""), ("wealth", ""), ("last belief", "italic")):
            table.add_column(column, style=style, overflow="ellipsis", no_wrap=column == "last belief", ratio=4 if column == "last belief" else None)
        for agent in self.agents:
            decision = agent.last_decision
            colour = "green" if decision and decision > 0 else "red" if decision and decision < 0 else "white"
            table.add_row(str(agent.agent_id), agent.spec.group, ",".join(c[:4] for c in agent.spec.visible_categories),
                          Text(f"{decision:+.1f}" if decision is not None else "-", style=colour), f"{agent.cumulative_reward:+.4f}",
                          f"{agent.wealth:.4f}", agent.last_belief[:120])
        return table

    def learning_panel(self) -> Panel:
        history = self.history
        table = Table(expand=True)
        for column in ("agent", "samples", "epochs (kept)", "held-back pay", "t", "decision KL", "belief KL", "text share", "s"):
            table.add_column(column, justify="right")
        for agent_id, row in sorted(history.phase_rows.items()):
            table.add_row(str(agent_id), str(row.samples), f"{row.epochs} ({row.kept_epoch})", _change(row.heldout_pay_before, row.heldout_pay_after), _t(row.heldout_t),
                          _fmt(row.decision_kl), _fmt(row.belief_kl), _fmt(row.belief_text_share), f"{row.seconds:.1f}")
        aed = "   ".join(f"phase {p}: decision {d:.3f}" + (f", belief {b:.3f}" if b is not None else "") for p, d, b in history.aed)
        title = f"training phase {history.phase}" if history.phase is not None else "learning"
        return Panel(Group(table, Text(f"AED  {aed}" if aed else "AED  not measured yet")), title=title, border_style="magenta")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _t(value) -> str:
    """A phase's held-back t statistic (None: no epoch beat the start, or one state was held back)."""
    return "-" if value is None else f"{value:+.2f}"


def _change(before, after) -> str:
    """'+0.012 -> +0.140', or '-' when nothing was held back."""
    return "-" if before is None or after is None else f"{before:+.3f} -> {after:+.3f}"


class PlainConsole:
    """One line per step for logs and CI (no terminal control codes)."""

    def __init__(self, total_steps: int, header: dict[str, str], stream=None):
        self.stream = stream or sys.stdout
        self.history = _History(total_steps, header)
        self.print("  ".join(f"{key}: {value}" for key, value in header.items()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start_at(self, step: int) -> None:
        if step:
            self.print(f"resuming at step {step}")

    def watch_warnings(self, log) -> None:
        self.history.warnings = log

    def on_step(self, model, report) -> None:
        self.history.record_step(report)
        total = self.history.total_steps
        elapsed = time.perf_counter() - self.history.started
        eta = elapsed / self.history.steps_recorded * (total - report.step - 1)
        prices = " ".join(f"{asset} {c.next_price:.2f} (fund. {report.fundamental_prices[asset]:.2f}, net demand {c.net_demand:+.2f})" for asset, c in report.clearings.items())
        spread = statistics.pstdev(report.decisions) if len(report.decisions) > 1 else 0.0
        self.print(f"step {report.step + 1}/{total} {report.date} {prices} decisions mean {statistics.fmean(report.decisions):+.2f} std {spread:.2f} "
                   f"fallbacks {report.fallbacks} warnings {self.history.warning_count} | {report.seconds:.1f} s, {len(report.decisions) / report.seconds:.2f} decisions/s, ETA {eta:.0f} s")
        for text in report.events:
            self.print(f"  event: {text}")

    def on_phase_agent(self, phase: int, row) -> None:
        self.print(f"  phase {phase} agent {row.agent_id}: samples {row.samples} epochs {row.epochs} (kept {row.kept_epoch}) "
                   f"held-back pay {_change(row.heldout_pay_before, row.heldout_pay_after)} t {_t(row.heldout_t)} decision KL {_fmt(row.decision_kl)} "
                   f"belief KL {_fmt(row.belief_kl)} text share {_fmt(row.belief_text_share)} {row.seconds:.1f} s")

    def on_phase_done(self, phase: int, rows: list) -> None:
        self.print(f"training phase {phase} done: {len(rows)} adapters saved")

    def on_aed(self, phase: int, result) -> None:
        belief = f", belief {result.aed_belief:.3f}" if result.aed_belief is not None else ""
        self.print(f"AED phase {phase}: decision {result.aed_decision:.3f}{belief}")

    def on_message(self, text: str) -> None:
        self.print(text)
