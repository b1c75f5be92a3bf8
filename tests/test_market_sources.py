"""The built-in data sources: the synthetic market's planted signal, and the S&P 500 sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from arch.data import frenchdata, sp500

from market.data import CATEGORIES, build_market_data
from market.sources.sp500 import load_sp500
from market.sources.synthetic import generate_synthetic


def synthetic(**overrides):
    settings = {"n_assets": 2, "n_days": 30, "start_date": "2021-01-04", "signal": {"technical": 0.3}}
    return generate_synthetic(**(settings | {"seed": 7} | overrides))


def correlation_with_next_return(data, name: str) -> float:
    """Correlation of factor `name` at t with the asset's simple return from t to t+1."""
    prices = data.prices.assign(next_return=data.prices.groupby("asset")["return"].shift(-1))
    factor = data.factors[data.factors["name"] == name]
    joined = factor.merge(prices, on=["date", "asset"]).dropna(subset=["next_return"])
    return float(np.corrcoef(joined["value"], joined["next_return"])[0, 1])


@pytest.fixture(scope="module")
def spx():
    return load_sp500()


def test_synthetic_is_deterministic_for_a_seed():
    first, again, other = synthetic(), synthetic(), synthetic(seed=8)
    pd.testing.assert_frame_equal(first.factors, again.factors)
    pd.testing.assert_frame_equal(first.prices, again.prices)
    assert not np.allclose(first.prices["close"], other.prices["close"])


def test_synthetic_planted_signal_is_recoverable():
    data = generate_synthetic(
        n_assets=1, n_days=2000, start_date="2010-01-01", signal={"fundamental": 0.4}, seed=11
    )
    assert correlation_with_next_return(data, "value_score") > 0.3
    assert abs(correlation_with_next_return(data, "news_tone")) < 0.08  # sentiment: no signal


def test_synthetic_layout():
    data = synthetic(n_assets=3, n_days=10, factors_per_category=3)
    assert data.assets == ["SYN0", "SYN1", "SYN2"]
    assert data.dates == list(pd.bdate_range("2021-01-04", periods=10))
    assert data.categories == sorted(CATEGORIES)  # zero-signal categories exist as noise
    assert data.factors.groupby("category")["name"].nunique().eq(3).all()
    assert len(data.factors) == 10 * 3 * len(CATEGORIES) * 3
    assert not data.factors.isna().any().any()
    assert data.factors.equals(data.factors.sort_values(["date", "asset", "category", "name"]))
    first_rows = data.prices.groupby("asset").head(1)
    assert (first_rows["close"] == 100.0).all() and first_rows["return"].isna().all()
    assert data.prices["return"].isna().sum() == 3
    assert (data.prices["volume"] > 0).all()
    assert data.source == "synthetic(seed=7)"


@pytest.mark.parametrize(
    "signal", [{"technical": 0.8, "macro": 0.7}, {"technical": 1.0}, {"astrology": 0.1}]
)
def test_synthetic_rejects_impossible_signal(signal):
    with pytest.raises(ValueError):
        synthetic(signal=signal)


def test_dates_are_those_common_to_all_assets():
    prices = pd.DataFrame(
        {
            "date": ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-02", "2020-01-03"],
            "asset": ["A", "A", "A", "B", "B"],
            "close": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    factors = pd.DataFrame(
        {"date": ["2020-01-01"], "asset": ["A"], "category": ["macro"], "name": ["x"], "value": [0.5]}
    )
    data = build_market_data(factors, prices, source="test")
    assert data.dates == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]
    assert data.prices["return"].tolist()[:3] == pytest.approx([np.nan, 1.0, 0.5], nan_ok=True)
    assert data.prices["volume"].isna().all()


def test_window_restricts_prices_and_keeps_earlier_factors():
    data = synthetic(n_days=20)
    window = data.window("2021-01-11", "2021-01-15")
    assert window.prices["date"].min() == pd.Timestamp("2021-01-11")
    assert window.prices["date"].max() == pd.Timestamp("2021-01-15")
    assert window.factors["date"].min() == pd.Timestamp("2021-01-04")  # look-back kept
    assert window.factors["date"].max() == pd.Timestamp("2021-01-15")
    assert len(data.window(None, None).prices) == len(data.prices)


def test_sp500_has_no_nan_and_documented_factors(spx):
    assert spx.assets == ["SPX"]
    assert not spx.factors.isna().any().any()
    assert spx.prices["return"].isna().sum() == 1
    names = spx.factors.groupby("category")["name"].unique().map(sorted).to_dict()
    assert names == {
        "fundamental": ["hml", "smb"],
        "macro": ["mkt_rf", "rf"],
        "sentiment": ["realised_vol_20d", "volume_change_5d"],
        "technical": [
            "ma_gap_20", "ma_gap_50", "momentum_20d", "momentum_5d", "momentum_60d", "reversal_1d"
        ],
    }
    assert spx.factors.groupby("date").size().eq(12).all()  # every factor on every date


def test_sp500_french_month_is_visible_only_after_it_ends(spx):
    mkt_rf = spx.factors[spx.factors["name"] == "mkt_rf"].set_index("date")["value"]
    months_since_start = (2010 - 1926) * 12 + (1 - 7)  # the file starts in July 1926
    january_2010 = 0.01 * frenchdata.load()["Mkt-RF"].iloc[months_since_start]
    assert (mkt_rf["2010-01"] != january_2010).all()
    assert mkt_rf["2010-02"].iloc[0] == pytest.approx(january_2010)
    # Every trading day sees exactly the previous calendar month: one value per month.
    assert mkt_rf.groupby(mkt_rf.index.to_period("M")).nunique().eq(1).all()
    assert spx.factors[spx.factors["name"] == "rf"]["value"].max() < 0.01  # decimals, not percent


def test_sp500_price_factors_use_only_past_prices(spx):
    close = sp500.load()["Close"]
    values = spx.factors.set_index(["date", "name"])["value"]
    for date in ["2003-05-14", "2008-10-10", "2018-12-31"]:
        position = close.index.get_loc(pd.Timestamp(date))
        past = close.iloc[: position + 1]
        expected = {
            "momentum_20d": np.log(past.iloc[-1] / past.iloc[-21]),
            "reversal_1d": -(past.iloc[-1] / past.iloc[-2] - 1.0),
            "ma_gap_50": past.iloc[-1] / past.iloc[-50:].mean() - 1.0,
            "realised_vol_20d": np.log(past).diff().iloc[-20:].std() * np.sqrt(252),
        }
        for name, value in expected.items():
            assert values[(pd.Timestamp(date), name)] == pytest.approx(value), (date, name)


def test_sp500_window():
    data = load_sp500("2005-01-01", "2005-12-31")
    assert data.prices["date"].between("2005-01-01", "2005-12-31").all()
    assert data.factors["date"].between("2005-01-01", "2005-12-31").all()
    assert len(data.dates) == 252
