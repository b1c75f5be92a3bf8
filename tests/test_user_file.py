"""A user's own data file: the happy path, and one test per mistake the loader must name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import DataFileError
from market.sources.user_file import load_user_file

GOOD_CSV = """date,asset,close,volume,technical.momentum_20d,macro.rate_change
2021-01-04,AAA,10.0,1000,0.10,0.001
2021-01-04,BBB,20.0,2000,0.20,0.001
2021-01-05,AAA,11.0,1100,0.11,0.002
2021-01-05,BBB,19.0,2100,0.21,0.002
"""


def write(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_becomes_market_data(tmp_path):
    path = write(tmp_path, GOOD_CSV)
    data = load_user_file(path)
    assert data.source == str(path)
    assert data.assets == ["AAA", "BBB"]
    assert data.categories == ["macro", "technical"]
    assert data.dates == [pd.Timestamp("2021-01-04"), pd.Timestamp("2021-01-05")]
    aaa = data.prices[data.prices["asset"] == "AAA"]
    assert aaa["return"].tolist() == pytest.approx([np.nan, 0.1], nan_ok=True)
    assert aaa["volume"].tolist() == [1000.0, 1100.0]
    factors = data.factors
    momentum = factors[(factors["name"] == "momentum_20d") & (factors["asset"] == "BBB")]
    assert momentum["value"].tolist() == [0.20, 0.21]
    assert set(momentum["category"]) == {"technical"}
    assert len(data.factors) == 8


def test_parquet_without_volume(tmp_path):
    table = pd.read_csv(write(tmp_path, GOOD_CSV)).drop(columns="volume")
    table["date"] = pd.to_datetime(table["date"])
    path = tmp_path / "data.parquet"
    table.to_parquet(path)
    data = load_user_file(path)
    assert data.prices["volume"].isna().all()
    assert data.prices["close"].tolist() == [10.0, 11.0, 20.0, 19.0]
    assert data.factors["date"].dtype == "datetime64[ns]"


def replace_cell(row: int, column: str, value: str) -> str:
    """GOOD_CSV with one cell changed; `row` is the 1-based data row."""
    table = pd.read_csv(pd.io.common.StringIO(GOOD_CSV), dtype=str)
    table.loc[row - 1, column] = value
    return table.to_csv(index=False)


ERROR_CASES = {
    "empty (header only)": ("date,asset,close,technical.x\n", "no data rows"),
    "empty (blank lines)": ("\n\n", "empty"),
    "unparseable csv": (GOOD_CSV + "2021-01-06,AAA,12,1,2,3,4,5\n", "cannot be read as CSV"),
    "missing required column": (GOOD_CSV.replace("close,", "price,"), "column 'close': required"),
    "column without category": (GOOD_CSV.replace("technical.momentum_20d", "momentum"), "column 'momentum'"),
    "unknown category": (GOOD_CSV.replace("macro.rate_change", "astrology.moon"), "column 'astrology.moon'"),
    "no factor columns": ("date,asset,close\n2021-01-04,AAA,10\n", "no factor columns"),
    "non-numeric close": (replace_cell(3, "close", "eleven"), "column 'close', row 3: 'eleven'"),
    "non-numeric volume": (replace_cell(2, "volume", "1,000"), "column 'volume', row 2"),
    "non-numeric factor": (replace_cell(4, "macro.rate_change", "n/a"), "column 'macro.rate_change', row 4"),
    "empty cell": (replace_cell(2, "technical.momentum_20d", ""), "column 'technical.momentum_20d', row 2: empty"),
    "NaN cell": (replace_cell(1, "close", "NaN"), "column 'close', row 1: empty or NaN"),
    "zero close": (replace_cell(4, "close", "0"), "column 'close', row 4: close is 0.0"),
    "negative close": (replace_cell(1, "close", "-3"), "column 'close', row 1: close is -3.0"),
    "bad date": (replace_cell(3, "date", "05/01/2021x"), "column 'date', row 3: '05/01/2021x' is not a date"),
    "mixed time zones": (
        replace_cell(1, "date", "2021-01-04T00:00+01:00"), "column 'date': cannot be parsed"
    ),
    "duplicate date and asset": (replace_cell(3, "asset", "BBB"), "row 4: asset 'BBB' on 2021-01-05"),
    "unsorted dates": (replace_cell(3, "date", "2021-01-01"), "row 3: asset 'AAA'"),
}


@pytest.mark.parametrize("text, expected", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_bad_csv_is_reported(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(DataFileError) as caught:
        load_user_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "(fix: " in message


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("missing.csv", None, "file not found"),
        ("data.xlsx", "x", "unsupported file type '.xlsx'"),
        ("zero.csv", "", "empty (0 bytes)"),
        ("binary.csv", b"\xff\xfe\x00\x81garbage", "cannot be read as CSV"),
        ("fake.parquet", "date,asset\n", "cannot be read as PARQUET"),
    ],
)
def test_unreadable_file_is_reported(tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_user_file(path)


def test_parquet_nan_is_reported_with_its_row(tmp_path):
    table = pd.read_csv(write(tmp_path, GOOD_CSV))
    table.loc[2, "macro.rate_change"] = np.nan
    path = tmp_path / "data.parquet"
    table.to_parquet(path)
    with pytest.raises(DataFileError, match="column 'macro.rate_change', row 3: empty or NaN"):
        load_user_file(path)
