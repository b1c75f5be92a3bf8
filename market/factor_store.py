"""The factor dataset in the run's DuckDB file, and the one query agents read it through.

The dataset is written once into `factor_data` and `price_data` (docs/schema.md), so a run's
database holds exactly what it traded on. `visible` serves, for one asset and a set of
categories, each factor's latest value dated at or before the step's date: the SQL filter
`date <= ?` makes look-ahead impossible by construction. It simplifies on purpose: a value is
never revised once dated, so "latest at or before t" is all an agent can know at t.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from market.data import MarketData

CREATE_TABLES = """
CREATE TABLE IF NOT EXISTS factor_data (
    date DATE, asset VARCHAR, category VARCHAR, name VARCHAR, value DOUBLE
);
CREATE TABLE IF NOT EXISTS price_data (
    date DATE, asset VARCHAR, close DOUBLE, "return" DOUBLE, volume DOUBLE
);
"""

# Rows are stored per asset and factor in date order, so DuckDB's zone maps skip other assets.
LOAD_FACTORS = """
INSERT INTO factor_data
SELECT CAST(date AS DATE), asset, category, name, value
FROM dataset_factors ORDER BY asset, category, name, date
"""
# pandas NaN would be stored as a NaN double; the schema promises NULL for an unknown value.
LOAD_PRICES = """
INSERT INTO price_data
SELECT CAST(date AS DATE), asset, close,
       CASE WHEN isnan("return") THEN NULL ELSE "return" END,
       CASE WHEN isnan(volume) THEN NULL ELSE volume END
FROM dataset_prices ORDER BY asset, date
"""

EXISTING_ROWS = "SELECT (SELECT count(*) FROM factor_data) + (SELECT count(*) FROM price_data)"

VISIBLE = """
SELECT category, name, max(date) AS factor_date, arg_max(value, date) AS value
FROM factor_data
WHERE asset = ? AND date <= ? AND list_contains(?::VARCHAR[], category)
GROUP BY category, name
ORDER BY category, name
"""


class FactorStore:
    """Serves each agent the factors it may see, from the run's DuckDB connection.

    Construct it outside any open transaction: a first load commits its own.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, data: MarketData):
        self.con = con
        con.execute(CREATE_TABLES)
        if con.execute(EXISTING_ROWS).fetchall() == [(0,)]:
            self._load(data)

    def visible(self, date: pd.Timestamp, asset: str, categories: Sequence[str]) -> pd.DataFrame:
        """The latest value of every factor of `categories` for `asset`, dated at or before `date`.

        Columns: category, name, factor_date (datetime64[ns]), value; sorted by category, name.
        """
        params = [asset, pd.Timestamp(date).date(), list(categories)]
        frame = self.con.execute(VISIBLE, params).df()
        frame["factor_date"] = frame["factor_date"].astype("datetime64[ns]")
        return frame

    def _load(self, data: MarketData) -> None:
        """Write the dataset in one transaction, so a crash never leaves half of it."""
        self.con.register("dataset_factors", data.factors)
        self.con.register("dataset_prices", data.prices)
        try:
            self.con.begin()
            try:
                self.con.execute(LOAD_FACTORS)
                self.con.execute(LOAD_PRICES)
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise
        finally:
            self.con.unregister("dataset_factors")
            self.con.unregister("dataset_prices")
