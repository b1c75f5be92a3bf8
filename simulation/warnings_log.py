"""Library warnings during a run: kept out of the live console, logged once to the run's database.

Python warnings and the warnings that transformers, PEFT and sentence-transformers log would
otherwise print into the Rich live display and tear it. While a run is driven they are caught
here instead: each distinct warning (its category and first line) is written once to the
`warnings` table with the step it first appeared at and how often it came, and the console shows
their count.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

LIBRARY_LOGGERS = ("transformers", "peft", "sentence_transformers", "huggingface_hub", "accelerate")


@dataclass
class WarningsLog:
    """Distinct warnings seen so far; `flush` writes the new ones to the store."""

    step: int = -1                                   # the step in progress, for `first_step`
    seen: dict[tuple[str, str], dict] = field(default_factory=dict)
    pending: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(entry["count"] for entry in self.seen.values())

    def add(self, category: str, message: str, source: str) -> None:
        key = (category, message.strip().splitlines()[0][:500] if message.strip() else "")
        if key in self.seen:
            self.seen[key]["count"] += 1
            return
        self.seen[key] = {"first_step": self.step, "category": key[0], "message": key[1], "source": source, "count": 1}
        self.pending.append(key)

    def flush(self, store) -> None:
        """Insert the warnings first seen since the last flush, and update the counts of all."""
        if not self.seen:
            return
        with store.transaction():
            for key in self.pending:
                store.insert("warnings", [self.seen[key]])
            for entry in self.seen.values():
                store.con.execute("UPDATE warnings SET count = ? WHERE category = ? AND message = ?", [entry["count"], entry["category"], entry["message"]])
        self.pending.clear()


class _Handler(logging.Handler):
    def __init__(self, log: WarningsLog):
        super().__init__(level=logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.add(f"log:{record.levelname}", record.getMessage(), record.name)


@contextmanager
def captured_warnings():
    """Inside the block, Python warnings and the libraries' logged warnings go to a `WarningsLog`."""
    log = WarningsLog()
    handler = _Handler(log)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        log.add(category.__name__, str(message), f"{filename}:{lineno}")

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # every distinct warning once per location, none turned into an error
        warnings.showwarning = show
        for logger in loggers:
            logger.handlers, logger.propagate = [handler], False
        try:
            yield log
        finally:
            warnings.showwarning = original
            for logger, (handlers, propagate) in zip(loggers, saved):
                logger.handlers, logger.propagate = handlers, propagate
