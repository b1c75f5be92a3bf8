"""User-facing errors: one line that names the file, the key (or column) and the fix.

Everything that a user can get wrong (a scenario, a data file, a model path, a locked database)
is raised as a `UserError` at the edge. The command line prints `str(error)` and exits non-zero,
without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, reported as `file: key: problem (fix: ...)`."""

    def __init__(self, file: str | None, key: str | None, problem: str, fix: str | None = None):
        self.file, self.key, self.problem, self.fix = file, key, problem, fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        text = f"{where}: {self.problem}" if where else self.problem
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())  # always exactly one line


class ScenarioError(UserError):
    """The scenario file is malformed, has an unknown key, or a value out of range."""


class DataFileError(UserError):
    """A market data file is missing columns, has NaNs, unsorted or duplicated dates, ..."""


class ModelPathError(UserError):
    """The model path is missing, is not a model, or is in a format we cannot load."""


class StoreError(UserError):
    """The run's database cannot be written (disk full, locked by another process, ...)."""
