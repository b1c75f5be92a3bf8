"""The sweep's console: runs done, running and failed, with an ETA; Rich in a terminal, lines elsewhere.

The ETA assumes the runs still to go take as long as the ones this command has finished, `slots`
at a time (nothing is known before the first run ends).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Self

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class SweepConsole:
    def __init__(self, folder: Path, keys: list[str], done_before: set[str], plain: bool = False):
        self.folder, self.keys = folder, keys
        self.status = {key: ("done before" if key in done_before else "waiting") for key in keys}
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.began: dict[str, float] = {}
        self.slots = 1
        self.opened = time.perf_counter()
        self.plain = plain or not sys.stdout.isatty()
        self._live: Live | None = None

    def __enter__(self) -> Self:
        if self.plain:
            skipped = sum(status == "done before" for status in self.status.values())
            print(f"sweep {self.folder}: {len(self.keys)} runs, {skipped} finished before, {self.slots} at a time", flush=True)
        else:
            self._live = Live(self, console=Console(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def started(self, key: str) -> None:
        self.status[key], self.began[key] = "running", time.perf_counter()
        if self.plain:
            print(f"  start  {key}", flush=True)

    def finished(self, key: str, status: str, seconds: float, error: str | None) -> None:
        self.status[key] = "completed" if status == "completed" else "failed"
        self.seconds[key] = seconds
        if error:
            self.errors[key] = error
        if self.plain:
            print(f"  {self.status[key]:<9} {key} in {seconds:.0f} s{': ' + error if error else ''}  [{self.summary()}]", flush=True)

    def counts(self) -> dict[str, int]:
        counts = {"completed": 0, "done before": 0, "running": 0, "failed": 0, "waiting": 0}
        for status in self.status.values():
            counts[status] += 1
        return counts

    def eta(self) -> float | None:
        finished = [self.seconds[key] for key, status in self.status.items() if status == "completed"]
        if not finished:
            return None
        per_run = sum(finished) / len(finished)
        now = time.perf_counter()
        left_running = sum(max(per_run - (now - self.began[key]), 0.0) for key, status in self.status.items() if status == "running")
        waiting = self.counts()["waiting"]
        return (left_running + waiting * per_run) / max(self.slots, 1)

    def summary(self) -> str:
        counts = self.counts()
        done = counts["completed"] + counts["done before"]
        eta = self.eta()
        return (f"{done}/{len(self.keys)} done, {counts['running']} running, {counts['failed']} failed, {counts['waiting']} waiting; "
                f"elapsed {_clock(time.perf_counter() - self.opened)}, ETA {_clock(eta) if eta is not None else '?'}")

    def __rich__(self) -> Group:
        table = Table(title=f"sweep {self.folder} ({self.slots} at a time)", title_justify="left", expand=False)
        for column in ("run", "status", "seconds", "error"):
            table.add_column(column)
        colours = {"completed": "green", "done before": "green", "running": "yellow", "failed": "red", "waiting": "dim"}
        now = time.perf_counter()
        for key in self.keys:
            status = self.status[key]
            seconds = self.seconds.get(key, now - self.began[key] if status == "running" else None)
            table.add_row(key, Text(status, style=colours[status]), f"{seconds:.0f}" if seconds is not None else "", self.errors.get(key, "")[:80])
        return Group(table, Text(self.summary(), style="bold"))
