"""Out-of-sample metrics of a strategy's daily decisions, each with a confidence interval.

A strategy is a series of decisions d_t in [-10, 10] on evaluation days with next returns r_t
(simple, 0.01 = 1 %). Its position is d_t / 10 of wealth, its daily pay `r_t * d_t` (the market's
linear reward). Metrics:

- `mean_pay`: mean of r_t * d_t;
- `hit_rate`: share of days with d_t != 0 whose sign matches r_t's (a zero return is a miss);
- `corr`: corr(d_t, r_t), and `corr_expected` for the exact expected decision where the model gives one;
- `sharpe`: annualised Sharpe ratio of the position's daily return (d_t / 10) * r_t, with its
  standard error `sharpe_se` (Lo 2002, iid: sqrt((1 + SR_d^2 / 2) / T) per day, annualised) and
  the number of days `days`, so that a short window's Sharpe is never quoted alone.

Intervals are 95 % moving-block bootstrap percentile intervals (blocks of `BLOCK_DAYS` days, so
that a few days of serial dependence stay together; `RESAMPLES` draws from a generator seeded by
the caller), stated as `ci_method = "block bootstrap"`. Several agents of a group, or several
evaluation seeds, give several decisions per day: they are averaged per day first, so the unit of
resampling is always the day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRADING_DAYS = 252
BLOCK_DAYS = 5
RESAMPLES = 1000
CI_METHOD = "block bootstrap"


@dataclass(frozen=True)
class Metric:
    name: str
    value: float | None
    ci_low: float | None
    ci_high: float | None


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _statistics(decisions: np.ndarray, returns: np.ndarray, expected: np.ndarray | None) -> dict[str, float]:
    pay = decisions * returns
    directional = decisions != 0
    hits = np.sign(decisions[directional]) == np.sign(returns[directional])
    position = decisions / 10.0 * returns
    spread = position.std(ddof=1) if len(position) > 1 else 0.0
    values = {
        "mean_pay": float(pay.mean()),
        "hit_rate": float(hits.mean()) if directional.any() else float("nan"),
        "corr": _corr(decisions, returns),
        "sharpe": float(position.mean() / spread * np.sqrt(TRADING_DAYS)) if spread > 0 else float("nan"),
    }
    if expected is not None:
        values["corr_expected"] = _corr(expected, returns)
    return values


def block_indices(days: int, generator: np.random.Generator, block: int = BLOCK_DAYS) -> np.ndarray:
    """One moving-block bootstrap resample of day indices 0..days-1 (blocks wrap around the end)."""
    starts = generator.integers(0, days, size=-(-days // block))
    return ((starts[:, None] + np.arange(block)[None, :]) % days).ravel()[:days]


def evaluate_strategy(decisions: np.ndarray, returns: np.ndarray, expected: np.ndarray | None = None, *, seed: int = 0) -> list[Metric]:
    """Every metric of one strategy with its interval; `decisions` and `expected` are [days]
    (already averaged over agents or seeds), `returns` [days]."""
    decisions, returns = np.asarray(decisions, dtype=float), np.asarray(returns, dtype=float)
    expected = None if expected is None else np.asarray(expected, dtype=float)
    point = _statistics(decisions, returns, expected)
    generator = np.random.default_rng(seed)
    draws = {name: [] for name in point}
    for _ in range(RESAMPLES):
        index = block_indices(len(returns), generator)
        for name, value in _statistics(decisions[index], returns[index], None if expected is None else expected[index]).items():
            draws[name].append(value)
    metrics = []
    for name, value in point.items():
        sample = np.array(draws[name])
        sample = sample[np.isfinite(sample)]
        low, high = (float(np.percentile(sample, 2.5)), float(np.percentile(sample, 97.5))) if len(sample) else (None, None)
        metrics.append(Metric(name, value if np.isfinite(value) else None, low, high))
    days = len(returns)
    daily = point["sharpe"] / np.sqrt(TRADING_DAYS) if np.isfinite(point["sharpe"]) else 0.0
    metrics.append(Metric("sharpe_se", float(np.sqrt((1 + daily**2 / 2) / days) * np.sqrt(TRADING_DAYS)), None, None))
    metrics.append(Metric("days", float(days), None, None))
    return metrics
