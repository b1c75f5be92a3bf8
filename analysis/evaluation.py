"""Out-of-sample metrics of a strategy's daily decisions, each with a confidence interval.

A strategy is a series of decisions d_t in [-10, 10] on evaluation days with next returns r_t
(simple, 0.01 = 1 %). Its position is d_t / 10 of wealth, its daily pay `r_t * d_t` (the market's
linear reward). Metrics:

- `mean_pay`: mean of r_t * d_t;
- `hit_rate`: share of days with d_t != 0 whose sign matches r_t's (a zero return is a miss);
- `corr`: corr(d_t, r_t), and `corr_expected` for the exact expected decision where the model gives one;
- `text_share`: for strategies that write beliefs (the agents, not the baselines), the share of
  beliefs that read as market text (`training.belief_quality.reads_as_market_text`, the training
  phases' measure), averaged per day first like the decisions;
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

import math
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

TRADING_DAYS = 252
MOMENTUM_DAYS = 20  # the momentum baseline's look-back
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


def _statistics(decisions: np.ndarray, returns: np.ndarray, expected: np.ndarray | None, text: np.ndarray | None = None) -> dict[str, float]:
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
    if text is not None:
        values["text_share"] = float(text.mean())
    return values


def momentum_decision(closes: pd.Series) -> float:
    """The momentum baseline on closes up to the decision date: the sign of the past
    `MOMENTUM_DAYS`-day return, times 10; 0 until that much history exists."""
    if len(closes) <= MOMENTUM_DAYS:
        return 0.0
    return 10.0 * float(np.sign(closes.iloc[-1] / closes.iloc[-1 - MOMENTUM_DAYS] - 1.0))


def factor_decision(value: float) -> float:
    """The factor baseline: the sign of a factor as a prompt shows it (2 decimals), times 10."""
    return 10.0 * float(np.sign(round(value, 2)))


def block_indices(days: int, generator: np.random.Generator, block: int = BLOCK_DAYS) -> np.ndarray:
    """One moving-block bootstrap resample of day indices 0..days-1 (blocks wrap around the end)."""
    starts = generator.integers(0, days, size=-(-days // block))
    return ((starts[:, None] + np.arange(block)[None, :]) % days).ravel()[:days]


def evaluate_strategy(decisions: np.ndarray, returns: np.ndarray, expected: np.ndarray | None = None, *, text: np.ndarray | None = None,
                      seed: int = 0) -> list[Metric]:
    """Every metric of one strategy with its interval; `decisions`, `expected` and `text` (the
    share of beliefs that read as market text) are [days], already averaged over agents or seeds;
    `returns` [days]."""
    decisions, returns = np.asarray(decisions, dtype=float), np.asarray(returns, dtype=float)
    expected = None if expected is None else np.asarray(expected, dtype=float)
    text = None if text is None else np.asarray(text, dtype=float)
    point = _statistics(decisions, returns, expected, text)
    generator = np.random.default_rng(seed)
    draws = {name: [] for name in point}
    for _ in range(RESAMPLES):
        index = block_indices(len(returns), generator)
        for name, value in _statistics(decisions[index], returns[index], None if expected is None else expected[index],
                                       None if text is None else text[index]).items():
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


EVALUATION_DB = "evaluation.duckdb"
SHOWN_METRICS = ("mean_pay", "hit_rate", "corr", "corr_expected", "sharpe", "text_share")
STRATEGY_ORDER = ("trained", "untrained", "buy_and_hold", "momentum", "factor")
DAILY_PAY_SQL = """
SELECT strategy, date, avg(reward) AS pay FROM eval_decisions GROUP BY ALL ORDER BY strategy, date
"""


@dataclass(frozen=True)
class OutOfSample:
    """What the report shows of a run's `evaluation.duckdb` (`python -m simulation evaluate`)."""

    info: dict          # the evaluation row: phase, dates, days, every, seeds, impact, data, in_sample
    table: pd.DataFrame  # per strategy and level (all, group): each shown metric as 'value [low, high]'
    daily_pay: pd.DataFrame  # strategy, date, pay (mean over agents and seeds)


def load_out_of_sample(run_dir: str | Path) -> OutOfSample | None:
    """The evaluation beside a run's database, or None if the run has not been evaluated."""
    path = Path(run_dir) / EVALUATION_DB
    if not path.exists():
        return None
    con = duckdb.connect(str(path), read_only=True)
    try:
        info = con.execute("SELECT * FROM evaluation").df().iloc[0].to_dict()
        metrics = con.execute("SELECT * FROM eval_metrics WHERE level IN ('all', 'group')").df()
        daily = con.execute(DAILY_PAY_SQL).df()
    finally:
        con.close()
    return OutOfSample(info, metrics_table(metrics), daily)


def metrics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per strategy and level: each shown metric with its interval, the Sharpe with its
    standard error, and the number of days."""
    rows = []
    order = {name: index for index, name in enumerate(STRATEGY_ORDER)}
    keys = metrics[["strategy", "level", "group_name"]].drop_duplicates()
    keys = keys.assign(_order=keys["strategy"].map(order).fillna(len(order)), _all=keys["level"] != "all")
    for key in keys.sort_values(["_order", "_all", "group_name"]).itertuples():
        mine = metrics[(metrics["strategy"] == key.strategy) & (metrics["level"] == key.level)
                       & ((metrics["group_name"] == key.group_name) if isinstance(key.group_name, str) else metrics["group_name"].isna())]
        value = dict(zip(mine["metric"], mine.itertuples(), strict=True))
        row = {"strategy": key.strategy, "agents": key.group_name if isinstance(key.group_name, str) else "all"}
        for name in SHOWN_METRICS:
            row[name] = _with_interval(value[name]) if name in value else ""
        if "sharpe_se" in value:
            row["sharpe"] += f" (s.e. {value['sharpe_se'].value:.2f})"
        row["days"] = int(value["days"].value) if "days" in value else None
        rows.append(row)
    return pd.DataFrame(rows)


def _with_interval(metric) -> str:
    if metric.value is None or (isinstance(metric.value, float) and math.isnan(metric.value)):
        return "n/a"
    digits = 4 if abs(metric.value) < 0.1 else 3
    if metric.ci_low is None or (isinstance(metric.ci_low, float) and math.isnan(metric.ci_low)):
        return f"{metric.value:.{digits}f}"
    return f"{metric.value:.{digits}f} [{metric.ci_low:.{digits}f}, {metric.ci_high:.{digits}f}]"
