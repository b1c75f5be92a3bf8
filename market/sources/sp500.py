"""The real sample: the S&P 500 index, daily 1999-2018, with Fama-French monthly factors.

Both come from the `arch` package, so nothing is downloaded. Every factor dated t uses only data
known at the close of t: price factors use trailing windows, and a monthly Fama-French value
becomes visible on the first trading day after its month ends. It simplifies on purpose: a single
asset ("SPX"), and the market-wide Fama-French returns stand in for fundamental and macro news.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from arch.data import frenchdata, sp500

from market.data import MarketData, build_market_data

ASSET = "SPX"
TRADING_DAYS_PER_YEAR = 252
# Fama-French column -> (category, factor name); the file is in percent per month.
FRENCH_FACTORS = {
    "Mkt-RF": ("macro", "mkt_rf"),
    "RF": ("macro", "rf"),
    "SMB": ("fundamental", "smb"),
    "HML": ("fundamental", "hml"),
}


def load_sp500(start: str | None = None, end: str | None = None) -> MarketData:
    """The S&P 500 sample, restricted to trading dates in [start, end] after the factor warm-up."""
    daily = sp500.load()
    close = daily["Close"].astype("float64")
    volume = daily["Volume"].astype("float64")
    wide = pd.concat([_price_factors(close, volume), _french_factors(close.index)], axis=1)
    wide = wide.dropna()  # the warm-up days of the longest trailing window
    start_ts = pd.Timestamp(start) if start is not None else wide.index.min()
    end_ts = pd.Timestamp(end) if end is not None else wide.index.max()
    wide = wide[(wide.index >= start_ts) & (wide.index <= end_ts)]
    if wide.empty:
        raise ValueError(f"no S&P 500 trading dates with factors in [{start}, {end}]")

    factors = wide.stack([0, 1]).rename("value").reset_index()
    factors.columns = ["date", "category", "name", "value"]
    factors["asset"] = ASSET
    dates = wide.index
    prices = pd.DataFrame(
        {"date": dates, "asset": ASSET, "close": close[dates], "volume": volume[dates]}
    )
    return build_market_data(factors, prices, source="sp500 (arch.data)")


def _price_factors(close: pd.Series, volume: pd.Series) -> pd.DataFrame:
    """Trailing price and volume factors; each row uses that day's close and earlier ones."""
    log_close = np.log(close)
    annualise = np.sqrt(TRADING_DAYS_PER_YEAR)
    mean_volume_5d = volume.rolling(5).mean()
    columns = {
        ("technical", "momentum_5d"): log_close.diff(5),  # log return over 5 trading days
        ("technical", "momentum_20d"): log_close.diff(20),
        ("technical", "momentum_60d"): log_close.diff(60),
        ("technical", "reversal_1d"): -close.pct_change(),  # minus the last simple return
        ("technical", "ma_gap_20"): close / close.rolling(20).mean() - 1.0,
        ("technical", "ma_gap_50"): close / close.rolling(50).mean() - 1.0,
        # sd of daily log returns over 20 days, annualised (0.16 = 16 % a year)
        ("sentiment", "realised_vol_20d"): log_close.diff().rolling(20).std() * annualise,
        ("sentiment", "volume_change_5d"): np.log(mean_volume_5d / mean_volume_5d.shift(5)),
    }
    return pd.DataFrame(columns)


def _french_factors(trading_dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Monthly Fama-French returns (decimals), each visible from the first day after its month."""
    monthly = frenchdata.load()
    visible_from = pd.DatetimeIndex(
        [(period + 1).start_time for period in _months(monthly.index)], name="visible_from"
    )
    monthly = monthly[list(FRENCH_FACTORS)].set_axis(visible_from) / 100.0
    monthly.columns = pd.MultiIndex.from_tuples(FRENCH_FACTORS.values())
    # Forward-fill onto trading dates: day t sees the latest month that ended before t.
    return monthly.reindex(monthly.index.union(trading_dates)).ffill().reindex(trading_dates)


def _months(index: pd.Index) -> pd.PeriodIndex:
    """The months of the Fama-French index.

    The file stores months as integers YYYYMM. `arch` passes them to `pd.to_datetime`, which reads
    them as nanoseconds after 1970-01-01; recover the integers in that case.
    """
    if isinstance(index, pd.DatetimeIndex):
        if not (index.year == 1970).all():
            return index.to_period("M")
        index = index.as_unit("ns").asi8
    yyyymm = np.asarray(index, dtype="int64")
    return pd.PeriodIndex.from_fields(year=yyyymm // 100, month=yyyymm % 100, freq="M")
