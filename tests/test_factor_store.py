"""The factor store: what an agent can see, on which date, and how the dataset lands in DuckDB."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from market.data import MarketData, build_market_data
from market.factor_store import FactorStore
from market.sources.synthetic import generate_synthetic

PLANTED = 999.0  # a value no synthetic factor takes


@pytest.fixture
def data() -> MarketData:
    return generate_synthetic(
        n_assets=3, n_days=40, start_date="2022-03-01", signal={"technical": 0.3}, seed=5
    )


def with_planted_rows(data: MarketData, rows: list[dict]) -> MarketData:
    """`data` with extra factor rows, e.g. a future value that must stay unseen."""
    factors = pd.concat([data.factors, pd.DataFrame(rows)], ignore_index=True)
    prices = data.prices.drop(columns="return")
    return build_market_data(factors, prices, data.source)


def test_agent_never_sees_future_factors(data):
    future = data.dates[30]
    oracle = {"date": future, "asset": "SYN1", "category": "macro", "name": "oracle"}
    planted = with_planted_rows(data, [oracle | {"value": PLANTED}])
    store = FactorStore(duckdb.connect(), planted)
    rng = np.random.default_rng(0)
    day_before = data.dates[29]
    for date in [*rng.choice(data.dates[:29], size=15), day_before]:
        for asset in data.assets:
            served = store.visible(pd.Timestamp(date), asset, ["technical", "macro"])
            assert (served["factor_date"] <= date).all()
            assert PLANTED not in served["value"].tolist()
    on_the_day = store.visible(future, "SYN1", ["macro"])
    assert PLANTED in on_the_day["value"].tolist()


def test_visible_serves_each_factors_latest_value_at_or_before_date(data):
    monthly = [
        {"date": day, "asset": "SYN0", "category": "macro", "name": "cpi", "value": value}
        for day, value in [("2022-03-01", 1.0), ("2022-04-01", 2.0)]
    ]
    store = FactorStore(duckdb.connect(), with_planted_rows(data, monthly))
    served = store.visible(pd.Timestamp("2022-03-31"), "SYN0", ["macro"]).set_index("name")
    assert served.loc["cpi", "value"] == 1.0
    assert served.loc["cpi", "factor_date"] == pd.Timestamp("2022-03-01")
    assert served.loc["rate_change", "factor_date"] == pd.Timestamp("2022-03-31")  # daily factor


def test_visible_matches_the_dataset_on_a_daily_date(data):
    store = FactorStore(duckdb.connect(), data)
    date = data.dates[12]
    served = store.visible(date, "SYN2", ["sentiment", "fundamental"])
    expected = data.factors[
        (data.factors["date"] == date)
        & (data.factors["asset"] == "SYN2")
        & data.factors["category"].isin(["sentiment", "fundamental"])
    ]
    assert list(served.columns) == ["category", "name", "factor_date", "value"]
    key = ["category", "name"]
    assert served[key].values.tolist() == expected[key].values.tolist()
    assert served["value"].tolist() == pytest.approx(expected["value"].tolist())


def test_hidden_category_never_served(data):
    secret = {"date": data.dates[0], "asset": "SYN0", "category": "sentiment", "name": "leak"}
    store = FactorStore(duckdb.connect(), with_planted_rows(data, [secret | {"value": PLANTED}]))
    for date in data.dates[::7]:
        served = store.visible(date, "SYN0", ["technical", "macro"])
        assert set(served["category"]) == {"technical", "macro"}
        assert PLANTED not in served["value"].tolist()
    assert store.visible(data.dates[5], "SYN0", []).empty


def test_nothing_is_served_before_the_first_date(data):
    store = FactorStore(duckdb.connect(), data)
    assert store.visible(pd.Timestamp("2022-02-28"), "SYN0", ["technical"]).empty


def column_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    query = "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?"
    return dict(con.execute(query + " ORDER BY ordinal_position", [table]).fetchall())


def test_tables_have_the_documented_types(data):
    con = duckdb.connect()
    FactorStore(con, data)
    key = {"date": "DATE", "asset": "VARCHAR"}
    assert column_types(con, "factor_data") == key | {
        "category": "VARCHAR", "name": "VARCHAR", "value": "DOUBLE"
    }
    assert column_types(con, "price_data") == key | {
        "close": "DOUBLE", "return": "DOUBLE", "volume": "DOUBLE"
    }


def test_first_return_is_stored_as_null(data):
    con = duckdb.connect()
    FactorStore(con, data)
    nulls = con.execute('SELECT count(*) FROM price_data WHERE "return" IS NULL').fetchall()
    assert nulls == [(len(data.assets),)]


def test_resume_does_not_duplicate_the_dataset(tmp_path, data):
    path = tmp_path / "run.duckdb"
    with duckdb.connect(path) as con:
        FactorStore(con, data)
    with duckdb.connect(path) as con:
        store = FactorStore(con, data)
        counts = con.execute(
            "SELECT (SELECT count(*) FROM factor_data), (SELECT count(*) FROM price_data)"
        ).fetchall()
        assert counts == [(len(data.factors), len(data.prices))]
        assert len(store.visible(data.dates[3], "SYN0", ["macro"])) == 2


def test_failed_load_leaves_no_half_dataset(data):
    con = duckdb.connect()
    broken = MarketData(factors=data.factors, prices=data.prices.drop(columns="volume"), source="x")
    with pytest.raises(duckdb.Error):
        FactorStore(con, broken)  # factors insert, then prices fail: all rolled back
    assert con.execute("SELECT count(*) FROM factor_data").fetchall() == [(0,)]
    FactorStore(con, data)
    assert con.execute("SELECT count(*) FROM factor_data").fetchall() == [(len(data.factors),)]
