"""The dataset the market trades on: long-format factors beside daily prices, one frame each.

Every source (synthetic, the S&P 500 sample, a user file) ends in `build_market_data`, so the
column types, the sort order and the return convention are decided in one place. It simplifies on
purpose: one close price a day per asset, returns are simple close-to-close returns, and a factor
value is dated by the first day it could have been known.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

CATEGORIES = ("technical", "fundamental", "sentiment", "macro")

FACTOR_COLUMNS = ["date", "asset", "category", "name", "value"]
PRICE_COLUMNS = ["date", "asset", "close", "return", "volume"]


@dataclass(frozen=True, eq=False)
class MarketData:
    """A dataset the market trades on.

    factors: long format `date, asset, category, name, value`; sorted by date, asset, category,
        name; no NaN. A value dated `t` uses only information available at the close of `t`.
    prices: `date, asset, close, return, volume`; sorted by asset, date. `close` is in the data's
        currency units; `return` is the simple return from the asset's previous date to `date`
        (NaN on its first date); `volume` is in shares or any positive unit (all NaN if unknown).
    source: a short description, e.g. "synthetic(seed=7)".
    """

    factors: pd.DataFrame
    prices: pd.DataFrame
    source: str

    @cached_property
    def categories(self) -> list[str]:
        return sorted(self.factors["category"].unique())

    @cached_property
    def assets(self) -> list[str]:
        return sorted(self.prices["asset"].unique())

    @cached_property
    def dates(self) -> list[pd.Timestamp]:
        """Trading dates on which every asset has a price, ascending."""
        per_asset = self.prices.groupby("asset")["date"].apply(set)
        common = set.intersection(*per_asset) if len(per_asset) else set()
        return sorted(pd.Timestamp(date) for date in common)

    def next_trading_dates(self, dates: list[pd.Timestamp]) -> list[pd.Timestamp]:
        """For each date, the data's next trading date: the one whose return pays a decision made on it."""
        trading = self.dates
        position = {date: index for index, date in enumerate(trading)}
        missing = [date for date in dates if position.get(date, len(trading) - 1) >= len(trading) - 1]
        if missing:
            raise ValueError(f"no trading date after {missing[0].date()} in the data")
        return [trading[position[date] + 1] for date in dates]

    def window(self, start: str | None, end: str | None) -> MarketData:
        """Prices within [start, end]; factors up to `end` (look-backs need the earlier ones)."""
        start_ts = pd.Timestamp(start) if start is not None else self.prices["date"].min()
        end_ts = pd.Timestamp(end) if end is not None else self.prices["date"].max()
        price_rows = self.prices["date"].between(start_ts, end_ts)
        factor_rows = self.factors["date"] <= end_ts
        return MarketData(
            factors=self.factors[factor_rows].reset_index(drop=True),
            prices=self.prices[price_rows].reset_index(drop=True),
            source=self.source,
        )


def build_market_data(factors: pd.DataFrame, prices: pd.DataFrame, source: str) -> MarketData:
    """Type, sort and complete a source's frames into a `MarketData`.

    factors: columns date, asset, category, name, value; the source guarantees no NaN.
    prices: columns date, asset, close and optionally volume; `return` is computed here from close.
    """
    factors = factors[FACTOR_COLUMNS].astype(
        {"asset": str, "category": str, "name": str, "value": "float64"}
    )
    factors["date"] = _normalised_dates(factors["date"])
    factors = factors.sort_values(["date", "asset", "category", "name"], ignore_index=True)

    prices = prices.copy()
    if "volume" not in prices:
        prices["volume"] = np.nan
    prices = prices.astype({"asset": str, "close": "float64", "volume": "float64"})
    prices["date"] = _normalised_dates(prices["date"])
    prices = prices.sort_values(["asset", "date"], ignore_index=True)
    prices["return"] = prices.groupby("asset")["close"].pct_change()
    return MarketData(factors=factors, prices=prices[PRICE_COLUMNS], source=source)


def _normalised_dates(dates: pd.Series) -> pd.Series:
    return pd.to_datetime(dates).dt.normalize().astype("datetime64[ns]")
