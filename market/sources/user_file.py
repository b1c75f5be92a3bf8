"""A user's own market data: one wide CSV or Parquet file, checked before anything trades on it.

Format (docs/data.md): one row per (date, asset) with columns `date`, `asset`, `close`, optional
`volume`, and factor columns named `<category>.<name>`. Every problem is raised as a
`DataFileError` that names the file, the column or row, and the fix. Rows in messages are 1-based
data rows (the header is not counted). It simplifies on purpose: a factor value in a row dated t
is taken to be known at the close of t; the file's author is responsible for that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataFileError
from market.data import CATEGORIES, MarketData, build_market_data

REQUIRED_COLUMNS = ("date", "asset", "close")
OPTIONAL_COLUMNS = ("volume",)
FORMAT_HINT = "see docs/data.md for the file format"


def load_user_file(path: str | Path) -> MarketData:
    """Read, check and convert a user's wide data file into a `MarketData`."""
    path = Path(path)
    file = str(path)
    table = _read_table(path)
    factor_columns = _check_columns(file, table)
    for column in table.columns:
        _check_no_missing(file, table[column], column)
    number_columns = [column for column in table.columns if column not in ("date", "asset")]
    numbers = {column: _numeric(file, table[column], column) for column in number_columns}
    _check_positive_close(file, numbers["close"])
    dates = _parse_dates(file, table["date"])
    assets = table["asset"].astype(str).str.strip()
    _check_unique_and_sorted(file, dates, assets)

    prices = pd.DataFrame({"date": dates, "asset": assets, "close": numbers["close"]})
    if "volume" in numbers:
        prices["volume"] = numbers["volume"]
    wide = pd.DataFrame({"date": dates, "asset": assets} | {c: numbers[c] for c in factor_columns})
    factors = wide.melt(id_vars=["date", "asset"], var_name="column", value_name="value")
    factors[["category", "name"]] = factors["column"].str.split(".", n=1, expand=True)
    return build_market_data(factors, prices, source=file)


def _read_table(path: Path) -> pd.DataFrame:
    file = str(path)
    if not path.is_file():
        raise DataFileError(file, None, "file not found", fix="check the data path in the scenario")
    kind = path.suffix.lower()
    if kind not in (".csv", ".parquet"):
        raise DataFileError(
            file, None, f"unsupported file type '{path.suffix}'", fix="save it as .csv or .parquet"
        )
    if path.stat().st_size == 0:
        raise DataFileError(file, None, "the file is empty (0 bytes)", fix=FORMAT_HINT)
    try:
        if kind == ".csv":
            # Every cell is read as text, so empty and non-numeric cells can be reported by row.
            table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        else:
            table = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataFileError(file, None, "the file is empty", fix=FORMAT_HINT) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        format_name = kind[1:].upper()
        raise DataFileError(
            file, None, f"cannot be read as {format_name}: {error}",
            fix=f"re-export it as valid {format_name}",
        ) from None
    if table.empty:
        raise DataFileError(file, None, "the file has a header but no data rows", fix=FORMAT_HINT)
    table.columns = [str(column).strip() for column in table.columns]
    return table.reset_index(drop=True)


def _check_columns(file: str, table: pd.DataFrame) -> list[str]:
    """Check the header and return the factor columns, in file order."""
    for column in REQUIRED_COLUMNS:
        if column not in table.columns:
            raise DataFileError(
                file, f"column '{column}'", "required column is missing",
                fix=f"add a '{column}' column; {FORMAT_HINT}",
            )
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    factor_columns = [column for column in table.columns if column not in known]
    for column in factor_columns:
        category, dot, name = column.partition(".")
        if not dot or not name or category not in CATEGORIES:
            raise DataFileError(
                file, f"column '{column}'",
                "is not a factor column named <category>.<name> with a known category",
                fix=f"rename it, e.g. 'technical.{name or column}'; "
                f"categories: {', '.join(CATEGORIES)}",
            )
    if not factor_columns:
        raise DataFileError(
            file, None, "the file has no factor columns",
            fix="add columns named <category>.<name>, e.g. technical.momentum_20d",
        )
    return factor_columns


def _check_no_missing(file: str, values: pd.Series, column: str) -> None:
    text = values.astype(str).str.strip().str.lower()
    missing = values.isna() | text.isin(["", "nan"])
    if missing.any():
        raise DataFileError(
            file, _where(column, missing), "empty or NaN cell",
            fix="fill in every cell, or drop the row",
        )


def _numeric(file: str, values: pd.Series, column: str) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = ~np.isfinite(numbers)
    if bad.any():
        raise DataFileError(
            file, _where(column, bad), f"'{values[bad].iloc[0]}' is not a finite number",
            fix="use plain decimal numbers, e.g. 0.0123",
        )
    return numbers


def _check_positive_close(file: str, close: pd.Series) -> None:
    non_positive = close <= 0
    if non_positive.any():
        raise DataFileError(
            file, _where("close", non_positive), f"close is {close[non_positive].iloc[0]}",
            fix="close is a price and must be positive; correct the value or drop the row",
        )


def _parse_dates(file: str, values: pd.Series) -> pd.Series:
    fix = "write dates as YYYY-MM-DD"
    try:
        dates = pd.to_datetime(values, errors="coerce", format="ISO8601")
    except ValueError as error:  # raised even with errors="coerce", e.g. for mixed time zones
        raise DataFileError(file, "column 'date'", f"cannot be parsed: {error}", fix=fix) from None
    if dates.isna().any():
        first_bad = values[dates.isna()].iloc[0]
        problem = f"'{first_bad}' is not a date"
        raise DataFileError(file, _where("date", dates.isna()), problem, fix=fix)
    if dates.dt.tz is not None:
        dates = dates.dt.tz_localize(None)  # keep the local calendar date
    return dates.dt.normalize()


def _check_unique_and_sorted(file: str, dates: pd.Series, assets: pd.Series) -> None:
    keys = pd.DataFrame({"date": dates, "asset": assets})
    duplicated = keys.duplicated()
    if duplicated.any():
        row = int(np.argmax(duplicated.to_numpy()))
        raise DataFileError(
            file, f"row {row + 1}",
            f"asset '{assets[row]}' on {dates[row].date()} appears more than once",
            fix="keep one row per date and asset",
        )
    backwards = keys.groupby("asset")["date"].diff() < pd.Timedelta(0)
    if backwards.any():
        row = int(np.argmax(backwards.to_numpy()))
        raise DataFileError(
            file, f"row {row + 1}",
            f"asset '{assets[row]}': {dates[row].date()} comes after a later date of that asset",
            fix="sort each asset's rows by date, oldest first",
        )


def _where(column: str, mask: pd.Series) -> str:
    """`column 'x', row n` for the first row where `mask` holds (1-based data row)."""
    return f"column '{column}', row {int(np.argmax(mask.to_numpy())) + 1}"
