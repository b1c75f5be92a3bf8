"""Scenario checks that need the loaded data: categories and assets exist, enough dates for the run."""

from __future__ import annotations

from core.errors import ScenarioError
from simulation.scenario import Scenario


def check_against_data(scenario: Scenario, file: str, categories: list[str], assets: list[str], n_dates: int) -> None:
    """Checks that need the loaded data: categories exist, assets exist, enough dates for the run."""
    for index, group in enumerate(scenario.agents.groups):
        for category in group.categories:
            if category not in categories:
                raise ScenarioError(file, f"agents.groups[{index}].categories", f"category {category!r} is not provided by the data ({', '.join(categories)})", "pick a category the data has, or use a data source that provides it")
    for index, event in enumerate(scenario.events):
        if getattr(event, "asset", None) and event.asset not in assets:
            raise ScenarioError(file, f"events[{index}].asset", f"asset {event.asset!r} is not in the data", f"use one of {', '.join(assets[:10])}")
    for asset in scenario.data.assets:
        if asset not in assets:
            raise ScenarioError(file, "data.assets", f"asset {asset!r} is not in the data", f"use some of {', '.join(assets[:10])}")
    every = scenario.data.every
    needed = (scenario.run.steps - 1) * every + 2  # the last decision date and the day that pays it
    if n_dates < needed:
        pace = f" at data.every = {every}" if every > 1 else ""
        fix = "lower run.steps" + (" or data.every" if every > 1 else "") + ", move data.start earlier, or give the data more days"
        raise ScenarioError(file, "run.steps", f"{scenario.run.steps} steps{pace} need {needed} trading dates but the data has {n_dates} after data.start", fix)
