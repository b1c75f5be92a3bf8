"""The documentation that is generated or quoted must match the code."""

from pathlib import Path

from simulation.config import load_scenario
from simulation.reference import scenario_reference

ROOT = Path(__file__).resolve().parent.parent


def test_scenario_reference_is_up_to_date():
    committed = (ROOT / "docs" / "scenario.md").read_text()
    assert committed == scenario_reference(), "regenerate it: python -m simulation keys > docs/scenario.md"


def test_every_shipped_scenario_validates():
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        load_scenario(path)


def test_base_scenario_meets_the_documented_minimum():
    scenario = load_scenario(ROOT / "scenarios" / "base.toml")
    assert scenario.agents.n_agents >= 8 and len(scenario.agents.groups) >= 3
    assert len({tuple(g.categories) for g in scenario.agents.groups}) == len(scenario.agents.groups)
    assert scenario.run.steps >= 40 and scenario.model.path == "packaged"
    assert scenario.training.enabled and scenario.run.steps // scenario.training.every >= 2
