"""Stylized facts of a return series, to compare a simulated market with a real one.

On simple returns r_t (one per trading step):
- excess kurtosis: m4 / m2^2 - 3 with population moments (0 for a Gaussian; fat tails > 0);
- Hill tail index of |r|: with the k = 5 % largest |r| (x_1 >= ... >= x_k > x_{k+1}),
  alpha = 1 / mean_i log(x_i / x_{k+1}); daily equity returns give about 3;
- sample autocorrelation of r and of |r| at lags 1..10, against the band +-1.96 / sqrt(n) of an iid
  series (real returns: r inside the band, |r| far above it: volatility clustering);
- leverage, as in Cont (2001): L(k) = corr(r_t, r_{t+k}^2), negative for equities;
- volume-volatility: corr(volume_t, |r_t|), Pearson on the volume as given (the S&P 500 volume
  trends up over 1999-2018, which the raw correlation does not remove).
A statistic that a short or constant series cannot support is NaN, never an error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from arch.data import sp500

SP500_LABEL = "S&P 500 (1999-2018)"
MAX_LAG = 10
TAIL_FRACTION = 0.05
Z_95 = 1.96


def excess_kurtosis(returns: np.ndarray) -> float:
    """m4 / m2^2 - 3, with population (biased) central moments."""
    returns = np.asarray(returns, dtype=float)
    if len(returns) < 4:
        return np.nan
    centred = returns - returns.mean()
    m2 = np.mean(centred**2)
    return float(np.mean(centred**4) / m2**2 - 3.0) if m2 > 0 else np.nan


def hill_tail_index(returns: np.ndarray, tail_fraction: float = TAIL_FRACTION) -> float:
    """Hill estimator of the tail index of |r|, from the top `tail_fraction` of observations."""
    magnitudes = np.sort(np.abs(np.asarray(returns, dtype=float)))[::-1]
    k = max(1, int(tail_fraction * len(magnitudes)))
    if len(magnitudes) <= k or magnitudes[k] <= 0:
        return np.nan
    mean_log_excess = np.mean(np.log(magnitudes[:k] / magnitudes[k]))
    return float(1.0 / mean_log_excess) if mean_log_excess > 0 else np.nan


def autocorrelation(series: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """Sample autocorrelation at lags 1..max_lag (NaN where the series is too short or flat)."""
    series = np.asarray(series, dtype=float)
    centred = series - series.mean() if len(series) else series
    variance = np.sum(centred**2)
    return np.array(
        [
            np.sum(centred[:-lag] * centred[lag:]) / variance
            if lag < len(centred) and variance > 0
            else np.nan
            for lag in range(1, max_lag + 1)
        ]
    )


def confidence_band(n: int) -> float:
    """Half-width of the 95 % band of an iid series' autocorrelation: 1.96 / sqrt(n)."""
    return Z_95 / np.sqrt(n) if n > 0 else np.nan


def significant_lags(acf: np.ndarray, band: float) -> float:
    """How many lags lie outside +-band (NaN if no lag could be measured)."""
    measured = acf[np.isfinite(acf)]
    return float(np.sum(np.abs(measured) > band)) if len(measured) else np.nan


def leverage_correlation(returns: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """corr(r_t, r_{t+k}^2) for k = 1..max_lag."""
    returns = np.asarray(returns, dtype=float)
    return np.array([pearson(returns[:-lag], returns[lag:] ** 2) for lag in range(1, max_lag + 1)])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN if either side has fewer than 2 points or no variance."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


def stylized_facts(
    returns: np.ndarray | pd.Series, volume: np.ndarray | pd.Series | None = None
) -> dict:
    """Every fact of one series; observations where r (or the volume) is not finite are dropped."""
    returns = np.asarray(returns, dtype=float)
    keep = np.isfinite(returns)
    if volume is not None:
        volume = np.asarray(volume, dtype=float)
        keep &= np.isfinite(volume)
    returns = returns[keep]
    acf_returns = autocorrelation(returns)
    acf_abs_returns = autocorrelation(np.abs(returns))
    band = confidence_band(len(returns))
    return {
        "observations": len(returns),
        "std": float(np.std(returns)) if len(returns) else np.nan,
        "excess_kurtosis": excess_kurtosis(returns),
        "hill_tail_index": hill_tail_index(returns),
        "acf_returns": acf_returns,
        "acf_abs_returns": acf_abs_returns,
        "confidence_band": band,
        "significant_acf_returns": significant_lags(acf_returns, band),
        "significant_acf_abs_returns": significant_lags(acf_abs_returns, band),
        "leverage": leverage_correlation(returns),
        "volume_volatility": np.nan if volume is None else pearson(volume[keep], np.abs(returns)),
    }


def stylized_facts_table(facts: Mapping[str, dict]) -> pd.DataFrame:
    """One row per fact, one column per series (`{label: stylized_facts(...)}`), all floats."""
    rows = {
        "observations": lambda f: f["observations"],
        "return std (%)": lambda f: 100 * f["std"],
        "excess kurtosis": lambda f: f["excess_kurtosis"],
        f"Hill tail index (top {TAIL_FRACTION:.0%} of |r|)": lambda f: f["hill_tail_index"],
        "ACF r, lag 1": lambda f: f["acf_returns"][0],
        f"significant ACF r, lags 1-{MAX_LAG}": lambda f: f["significant_acf_returns"],
        "ACF |r|, lag 1": lambda f: f["acf_abs_returns"][0],
        f"significant ACF |r|, lags 1-{MAX_LAG}": lambda f: f["significant_acf_abs_returns"],
        "95% band (1.96/sqrt(n))": lambda f: f["confidence_band"],
        "leverage corr(r_t, r_t+1^2)": lambda f: f["leverage"][0],
        "corr(volume_t, |r_t|)": lambda f: f["volume_volatility"],
    }
    return pd.DataFrame(
        {label: [float(row(f)) for row in rows.values()] for label, f in facts.items()},
        index=list(rows),
    )


def sp500_sample() -> tuple[pd.Series, pd.Series]:
    """Daily simple returns of the S&P 500 (adjusted close) and the same days' volume."""
    daily = sp500.load()
    returns = daily["Adj Close"].pct_change().dropna()
    return returns, daily["Volume"].loc[returns.index].astype(float)
