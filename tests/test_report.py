"""The HTML report, on synthetic run databases laid out as in docs/schema.md."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from run_databases import make_run_db

from analysis.report import NO_STEPS, NOT_MEASURED, SECTIONS, main_report
from core.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Run A trained once and measured AED twice; run B has neither training nor AED rows."""
    root = tmp_path_factory.mktemp("runs")
    trained = make_run_db(root / "a" / "run.duckdb", name="run A", steps=40, phase_step=19)
    untrained = make_run_db(
        root / "b" / "run.duckdb", name="run B", steps=30, phase_step=None, with_aed=False, seed=1
    )
    return trained, untrained


@pytest.fixture(scope="module")
def two_run_html(runs) -> str:
    trained, untrained = runs
    out = main_report([str(trained.parent), str(untrained)], None)
    assert out == trained.parent / "report.html"  # beside the first run by default
    return out.read_text(encoding="utf-8")


def test_report_of_two_runs_has_every_section_and_figure(two_run_html):
    only_when_there = {"sweep", "prompts", "evaluation"}  # a sweep's summary; an APO run's prompts; an evaluated run (tests/test_sweep.py, test_apo.py, test_evaluate.py)
    for key, title in SECTIONS.items():
        assert (f"<h2>{title}</h2>" in two_run_html) == (key not in only_when_there)
    # price (one asset, runs overlaid) + a heatmap per run + AED + reward panels
    assert two_run_html.count("<img") == 5
    assert two_run_html.count('src="data:image/png;base64,') == 5  # self-contained
    assert "<h3>run A</h3>" in two_run_html and "<h3>run B</h3>" in two_run_html


def test_report_says_not_measured_for_a_run_without_training_or_aed(two_run_html):
    # run B: the AED table and the training table
    assert two_run_html.count(NOT_MEASURED) == 2


def test_report_shows_beliefs_and_the_sp500_reference(two_run_html):
    assert "trend belief of agent 0 at step 0." in two_run_html
    assert "contrarian belief of agent 2 at step 39." in two_run_html
    assert "S&amp;P 500 (1999-2018)" in two_run_html


def test_report_of_a_run_with_no_committed_step(tmp_path):
    empty = make_run_db(
        tmp_path / "run.duckdb", name="fresh", steps=0, phase_step=None, with_aed=False
    )
    html = main_report([str(empty)], str(tmp_path / "out" / "fresh.html")).read_text(
        encoding="utf-8"
    )
    assert "<img" not in html
    assert NO_STEPS in html and NOT_MEASURED in html


def test_main_report_rejects_a_path_without_a_run_database(tmp_path):
    with pytest.raises(UserError, match="no run database"):
        main_report([str(tmp_path)], None)
    with pytest.raises(UserError, match="no run given"):
        main_report([], None)


def test_main_report_rejects_a_duckdb_file_that_is_not_a_run(tmp_path):
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    with pytest.raises(UserError, match="not a run database"):
        main_report([str(other)], None)


def test_main_report_rejects_a_file_that_is_not_duckdb(tmp_path):
    (tmp_path / "run.duckdb").write_text("not a database")
    with pytest.raises(UserError, match="cannot open the run database"):
        main_report([str(tmp_path)], None)
