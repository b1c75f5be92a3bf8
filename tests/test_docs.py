"""The documentation that is generated or quoted must match the code."""

from pathlib import Path

from simulation.reference import scenario_reference
from simulation.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent


def test_scenario_reference_is_up_to_date():
    committed = (ROOT / "docs" / "scenario.md").read_text()
    assert committed == scenario_reference(), "regenerate it: python -m simulation keys > docs/scenario.md"


def test_every_shipped_scenario_validates():
    paths = sorted((ROOT / "scenarios").glob("*.toml"))
    assert len(paths) >= 2
    for path in paths:
        load_scenario(path)


def test_base_scenario_meets_the_documented_minimum():
    scenario = load_scenario(ROOT / "scenarios" / "base.toml")
    # 6 agents in 3 groups, 2 assets, 75 steps, a phase after step 50 that learns from all 100 of each
    # agent's decisions, then 25 steps with the adapters: what fits 5 minutes on 2 CPU cores and shows
    # the planted-category group learn in the run's own tables (docs/benchmarks.md)
    assert scenario.agents.n_agents >= 6 and len(scenario.agents.groups) >= 3
    assert len({tuple(g.categories) for g in scenario.agents.groups}) == len(scenario.agents.groups)
    assert scenario.run.steps >= 40 and scenario.model.path == "packaged"
    assert scenario.training.enabled and scenario.training.every < scenario.run.steps  # decisions after a phase
    assert scenario.run.steps - scenario.training.every >= 20 and scenario.training.max_samples == 0


def _documented_columns(part: int = 0) -> dict[str, set[str]]:
    """Table -> the column names docs/schema.md lists for it: part 0 the run database, 1 the sweep
    manifest, 2 the evaluation database (the parts are the page's top-level headings, in order)."""
    tables, current = {}, None
    text = ("\n" + (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")).split("\n# ")[part + 1]
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].split(" — ")[0].strip()
            tables[current] = set()
        elif current and line.startswith("| ") and not line.startswith("| column") and not line.startswith("|---"):
            tables[current] |= {name.strip() for name in line.split("|")[1].split(",")}
    return tables


def _columns(con) -> dict[str, set[str]]:
    """Table -> the column names a DuckDB connection's database has."""
    actual = {}
    for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall():
        actual.setdefault(table, set()).add(column)
    return actual


def _schema_columns(schema: str) -> dict[str, set[str]]:
    """Table -> the column names the tables that `schema` creates have (in an in-memory database)."""
    import duckdb

    with duckdb.connect() as con:
        con.execute(schema)
        return _columns(con)


def test_the_schema_doc_lists_every_table_and_column_the_run_database_has(tmp_path):
    from core.store import RunStore
    from market.factor_store import CREATE_TABLES

    store = RunStore(tmp_path / "run.duckdb")
    store.con.execute(CREATE_TABLES)
    actual = _columns(store.con)
    store.close()
    assert _documented_columns() == actual


def test_the_schema_doc_lists_every_table_and_column_of_the_sweep_manifest():
    from core.sweep_store import SCHEMA

    assert _documented_columns(1) == _schema_columns(SCHEMA)


def test_the_schema_doc_lists_every_table_and_column_of_the_evaluation_database():
    from simulation.evaluate import SCHEMA

    assert _documented_columns(2) == _schema_columns(SCHEMA)


def test_base_toml_documents_every_key_of_the_schema():
    """README says scenarios/base.toml documents every key: each key of every section is written
    there (set or commented out)."""
    from simulation.reference import documented_keys

    text = (ROOT / "scenarios" / "base.toml").read_text(encoding="utf-8")
    written = {line.lstrip("# ").split("=")[0].strip() for line in text.splitlines() if "=" in line}
    missing = [key for key in documented_keys() if key.rsplit(".", 1)[-1] not in written]
    assert missing == []
