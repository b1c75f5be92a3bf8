"""End-to-end behaviour of a run on the tiny model: what goes into DuckDB, and what agents may see."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
from helpers import tiny_scenario

from simulation.run import start

NEWS = 'kind = "news"\nstep = 2\ncategory = "sentiment"\ntext = "The CEO resigned unexpectedly."'


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("engine")
    path = tiny_scenario(folder, tiny_model_dir, steps=5, extra=f"[[events]]\n{NEWS}")
    result = start(str(path), plain=True)
    con = duckdb.connect(str(result.database), read_only=True)
    yield result, con
    con.close()


def test_run_completes_and_fills_every_table(finished_run):
    result, con = finished_run
    assert result.status == "completed"
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("agents", "market", "decisions", "steps", "factors_served", "events", "factor_data", "price_data")}
    assert counts["agents"] == 5
    assert counts["market"] == 5 and counts["steps"] == 5
    assert counts["decisions"] == 5 * 5
    assert counts["factors_served"] > 0 and counts["factor_data"] > 0 and counts["price_data"] > 0
    assert counts["events"] == 1
    run = con.execute("SELECT status, master_seed, model_sha256, package_versions, scenario_toml, backend FROM run").fetchall()[0]
    assert run[0] == "completed" and run[1] == 11 and len(run[2]) == 64
    assert {"torch", "transformers", "duckdb", "mesa", "python"} <= set(json.loads(run[3]))
    assert "[run]" in run[4]
    assert json.loads(run[5]) == {"backend": "transformers"}  # no LoRA training: nothing said of LoRA decoding


def test_agent_never_sees_future_factors_or_hidden_categories(finished_run):
    _, con = finished_run
    leaks = con.execute("""
        SELECT count(*) FROM factors_served f
        JOIN steps s USING (step) JOIN agents a USING (agent_id)
        WHERE f.factor_date > s.date OR NOT list_contains(a.visible_categories, f.category)""").fetchall()[0][0]
    assert leaks == 0
    shown = con.execute("SELECT DISTINCT agent_id, category FROM factors_served").fetchall()
    assert (0, "technical") in shown and (0, "fundamental") not in shown and (4, "sentiment") in shown


def test_prompts_show_only_visible_categories_and_news_only_to_its_readers(finished_run):
    _, con = finished_run
    prompts = dict(con.execute("SELECT agent_id, prompt FROM decisions WHERE step = 2").fetchall())
    assert "Technical factors" in prompts[0] and "Fundamental factors" not in prompts[0]
    assert "CEO resigned" in prompts[4]  # the sentiment reader
    assert all("CEO resigned" not in prompts[a] for a in range(4))


def test_impact_zero_replays_the_data_returns_exactly(finished_run):
    _, con = finished_run
    rows = con.execute("""
        SELECT m."return", p."return" FROM market m
        JOIN price_data p ON p.asset = m.asset
        AND p.date = (SELECT min(date) FROM price_data q WHERE q.asset = m.asset AND q.date > m.date)
        ORDER BY m.step""").fetchall()
    assert len(rows) == 5
    assert all(simulated == data for simulated, data in rows)


def test_every_decision_is_in_range_and_rewarded_by_return_times_depth(finished_run):
    _, con = finished_run
    decisions = con.execute("""SELECT d.decision_depth, d.realised_return, d.reward, d.expected_decision, d.decision_std, a.temperature
                               FROM decisions d JOIN agents a USING (agent_id)""").fetchall()
    for depth, realised, reward, expected, spread, temperature in decisions:
        assert reward == pytest.approx(realised * depth)
        if temperature == 0:
            assert spread == pytest.approx(0.0, abs=1e-6) and expected == pytest.approx(depth, abs=1e-4)  # greedy: one decision, surely
        else:
            assert spread > 0.1  # a sampled decision comes from a spread distribution
    assert len({depth for depth, *_ in decisions}) > 1


def test_prompts_never_name_the_calendar_date(finished_run):
    _, con = finished_run
    leaked = con.execute("SELECT count(*) FROM decisions WHERE contains(prompt, strftime(date, '%Y-%m-%d')) OR contains(prompt, '2020')").fetchall()[0][0]
    assert leaked == 0


def test_memory_of_past_trades_reaches_the_prompt(finished_run):
    _, con = finished_run
    first, later = (con.execute("SELECT prompt FROM decisions WHERE agent_id = 1 AND step = ?", [s]).fetchall()[0][0] for s in (0, 3))
    assert "recent trades" not in first and "recent trades" in later


def test_price_impact_moves_the_price_with_net_demand(tmp_path, tiny_model_dir):
    path = tiny_scenario(tmp_path, tiny_model_dir, steps=4, impact=0.05)
    result = start(str(path), plain=True)
    con = duckdb.connect(str(result.database), read_only=True)
    rows = con.execute('SELECT "return", fundamental_return, net_demand FROM market ORDER BY step').fetchall()
    con.close()
    for simulated, fundamental, net_demand in rows:
        assert np.log1p(simulated) - np.log1p(fundamental) == pytest.approx(0.05 * net_demand, abs=1e-12)


def test_a_second_run_never_overwrites_the_first(tmp_path, tiny_model_dir):
    path = tiny_scenario(tmp_path, tiny_model_dir, steps=1)
    first, second = start(str(path), plain=True), start(str(path), plain=True)
    assert first.run_dir != second.run_dir and first.database.exists() and second.database.exists()


def test_data_every_decides_every_kth_date_paid_by_the_next_day(tmp_path, tiny_model_dir):
    path = tiny_scenario(tmp_path, tiny_model_dir, steps=4, extra="[data]\nevery = 4")
    result = start(str(path), plain=True)
    con = duckdb.connect(str(result.database), read_only=True)
    trading = [row[0] for row in con.execute("SELECT DISTINCT date FROM price_data ORDER BY date").fetchall()]
    closes = dict(con.execute("SELECT date, close FROM price_data").fetchall())
    rows = con.execute('SELECT date, price, "return" FROM market ORDER BY step').fetchall()
    con.close()
    assert [date for date, _, _ in rows] == trading[::4][:4]
    for date, price, simulated in rows:
        next_date = trading[trading.index(date) + 1]
        assert simulated == pytest.approx(closes[next_date] / closes[date] - 1.0, rel=1e-9)  # the next day's return
        assert price == pytest.approx(100.0 * closes[date] / closes[trading[0]], rel=1e-9)  # no impact: the data's path over the skipped days too


def test_too_many_steps_for_data_every_is_one_line(tmp_path, tiny_model_dir):
    from core.errors import ScenarioError
    from simulation.run import load_data
    from simulation.scenario import load_scenario

    path = tiny_scenario(tmp_path, tiny_model_dir, steps=9, extra="[data]\nevery = 4")
    with pytest.raises(ScenarioError, match=r"9 steps at data.every = 4 need 34 trading dates"):
        load_data(load_scenario(str(path)), str(path))
