"""The base of every typed config section: unknown keys are errors, values are frozen.

Each component's config lives beside the code that reads it (`training/config.py`,
`market/config.py`, ...) and derives from `Section`; `simulation/config.py` assembles them into
the scenario schema and turns validation errors into one-line messages.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class Section(BaseModel):
    """Every section forbids unknown keys, so a typo is an error rather than a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyedValueError(ValueError):
    """A cross-field check that knows which key is wrong, and how to fix it."""

    def __init__(self, key: str, problem: str, fix: str):
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(problem)
