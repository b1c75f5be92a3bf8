"""Out-of-sample evaluation of a trained run (tiny model): the look-ahead guard, baselines on the
evaluation dates, determinism given the seed, and nothing trains."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from helpers import tiny_scenario

from core.errors import UserError
from simulation.evaluate import evaluate
from simulation.run import start
from training.belief_quality import reads_as_market_text


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("evaluate")
    result = start(str(tiny_scenario(folder, tiny_model_dir, steps=6, every=3, training=True)), plain=True)
    return result.database.parent


def _hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*")) if path.is_file()}


def _tables(database: Path) -> dict[str, pd.DataFrame]:
    con = duckdb.connect(str(database), read_only=True)
    tables = {name: con.execute(f"SELECT * FROM {name}").df() for name in ("eval_decisions", "eval_metrics")}
    con.close()
    return tables


def test_dates_the_run_traded_on_are_refused_unless_allowed(trained_run):
    with pytest.raises(UserError, match="dates the run traded on"):
        evaluate(trained_run, start="2020-01-01", end="2020-02-15")
    result = evaluate(trained_run, start="2020-01-01", end="2020-01-20", allow_overlap=True)
    assert result.in_sample
    metrics = _tables(result.database)["eval_metrics"]
    assert metrics["in_sample"].all()


def test_a_missing_phase_gets_a_one_line_error(trained_run):
    with pytest.raises(UserError, match="no training phase 7"):
        evaluate(trained_run, phase=7)


def test_evaluation_is_out_of_sample_deterministic_and_trains_nothing(trained_run):
    adapters_before = _hashes(trained_run / "adapters")
    run_db = hashlib.sha256((trained_run / "run.duckdb").read_bytes()).hexdigest()
    first = evaluate(trained_run)
    tables = _tables(first.database)
    second = _tables(evaluate(trained_run).database)
    assert _hashes(trained_run / "adapters") == adapters_before  # nothing trained: every adapter file unchanged, byte for byte
    assert hashlib.sha256((trained_run / "run.duckdb").read_bytes()).hexdigest() == run_db
    assert not first.in_sample
    for name in tables:
        pd.testing.assert_frame_equal(tables[name], second[name])  # the same seed gives the same evaluation

    decisions = tables["eval_decisions"]
    con = duckdb.connect(str(trained_run / "run.duckdb"), read_only=True)
    traded = set(pd.to_datetime(con.execute("SELECT DISTINCT date FROM decisions").df()["date"]))
    con.close()
    dates = {strategy: set(pd.to_datetime(frame["date"])) for strategy, frame in decisions.groupby("strategy")}
    assert set(dates) == {"trained", "untrained", "buy_and_hold", "momentum", "factor"}
    assert len({frozenset(d) for d in dates.values()}) == 1  # baselines on exactly the agents' evaluation dates
    assert not dates["trained"] & traded and min(dates["trained"]) > max(traded)
    trained = decisions[decisions["strategy"] == "trained"]
    untrained = decisions[decisions["strategy"] == "untrained"]
    assert set(trained["adapter_version"]) == {2} and set(untrained["adapter_version"]) == {0}
    assert np.allclose(trained["reward"], trained["decision_depth"] * trained["realised_return"])  # no impact: the data's own returns
    hold = decisions[decisions["strategy"] == "buy_and_hold"]
    assert (hold["decision_depth"] == 10.0).all()
    metric_names = set(tables["eval_metrics"]["metric"])
    assert {"mean_pay", "hit_rate", "corr", "corr_expected", "sharpe", "sharpe_se", "days"} <= metric_names
    bounded = tables["eval_metrics"].dropna(subset=["ci_low", "ci_high"])
    assert (bounded["ci_low"] <= bounded["ci_high"]).all()
    # belief text share: for the agents (who write beliefs), the share of their beliefs that read as market text
    metrics = tables["eval_metrics"]
    share = metrics[(metrics["metric"] == "text_share") & (metrics["level"] == "all")].set_index("strategy")["value"]
    assert set(share.index) == {"trained", "untrained"}
    for strategy in ("trained", "untrained"):
        mine = decisions[decisions["strategy"] == strategy]
        reads = pd.Series([reads_as_market_text(b, p) for b, p in zip(mine["belief"], mine["prompt"], strict=True)], index=mine.index)
        assert share[strategy] == pytest.approx(reads.groupby(mine["date"]).mean().mean())


def _run_data(run_dir: Path):
    from core.store import RunStore
    from simulation.run import run_scenario, source_data

    store = RunStore(run_dir / "run.duckdb", read_only=True)
    info = store.run_info()
    store.close()
    scenario = run_scenario(info)
    return scenario, source_data(scenario, info["scenario_path"])


def test_every_kth_date_is_paid_by_its_next_day_and_priced_as_the_data(trained_run):
    scenario, data = _run_data(trained_run)
    trading = data.dates
    closes = data.prices.set_index("date")["close"]
    every_day = _tables(evaluate(trained_run).database)["eval_decisions"]
    window = sorted(set(pd.to_datetime(every_day["date"])))
    sampled = _tables(evaluate(trained_run, every=3).database)
    decisions = sampled["eval_decisions"]
    for strategy, frame in decisions.groupby("strategy"):
        assert sorted(set(pd.to_datetime(frame["date"]))) == window[::3], strategy  # agents and baselines on exactly the same dates
    trained = decisions[decisions["strategy"] == "trained"]
    for row in trained.itertuples():
        date = pd.Timestamp(row.date)
        next_date = trading[trading.index(date) + 1]
        assert row.realised_return == pytest.approx(closes[next_date] / closes[date] - 1.0, rel=1e-9)  # the next day's return, not the next decision date's
        price = scenario.market.initial_price * closes[date] / closes[window[0]]  # no impact: the data's path, also over the skipped days
        assert f"price {price:.2f}." in row.prompt
    con = duckdb.connect(str(trained_run / "evaluation.duckdb"), read_only=True)
    every, days = con.execute("SELECT every, days FROM evaluation").fetchone()
    con.close()
    assert (every, days) == (3, len(window[::3]))


def test_every_must_be_positive(trained_run):
    with pytest.raises(UserError, match="--every"):
        evaluate(trained_run, every=0)


def test_the_report_shows_agents_against_baselines_with_intervals_and_a_pay_plot(trained_run, tmp_path):
    from analysis.report import write_report

    evaluate(trained_run, every=2)
    page = write_report([trained_run / "run.duckdb"], tmp_path / "report.html").read_text()
    section = page.split("Out of sample: agents against baselines", 1)[1].split("</section>", 1)[0]
    for strategy in ("trained", "untrained", "buy_and_hold", "momentum", "factor"):
        assert f"<td>{strategy}</td>" in section
    assert "every 2th trading date" in section and "out of sample" in section
    assert section.count(" [") >= 5  # intervals beside the values
    assert "(s.e. " in section and section.count("<img") == 1  # the Sharpe's standard error; one cumulative-pay plot
