"""The market's payoff rule: what a decision earns once the next return is known.

The market pays it in `settle` whether or not agents train; training reads the same rule to
score every decision an agent could have made (training/hindsight.py).

- `linear` is the user's definition: `reward = realised_return * decision_depth`. With 7.5 and
  +5 % it pays +0.375; with 7.5 and -3 % it pays -0.225. Because it is linear in the depth, the
  best answer to any edge is always ±10, and plain RL drives agents there.
- `risk_adjusted` is a mean-variance utility with the agent's own risk aversion:
  `reward = r * d - 0.5 * lambda_i * d^2 * var`, where `var` is the variance of the asset's daily
  returns over the last `VARIANCE_WINDOW` dates known at decision time, and
  `lambda_i = risk_aversion * (1 - risk_preference)`. Its optimum is `d* = E[r] / (lambda_i var)`,
  an interior depth: with E[r] = 0.5 %, var = 1e-4 and lambda_i = 10, d* = 5. An agent with
  risk_preference 1 gets the linear reward.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

VARIANCE_WINDOW = 20  # trading days


def recent_variance(returns: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    """Per date, the variance of the daily returns over the last `VARIANCE_WINDOW` dates up to and
    including it (known at that date's close); 0 until two returns exist."""
    return returns.rolling(VARIANCE_WINDOW, min_periods=2).var().fillna(0.0)


def reward(
    kind: Literal["linear", "risk_adjusted"],
    realised_return: float,
    decision_depth: float,
    *,
    risk_preference: float = 1.0,
    risk_aversion: float = 0.0,
    recent_variance: float = 0.0,
) -> float:
    """The payoff of `decision_depth` at `realised_return`; elementwise on arrays (numpy broadcasting)."""
    linear = realised_return * decision_depth
    if kind == "linear":
        return linear
    risk_lambda = risk_aversion * (1.0 - risk_preference)
    return linear - 0.5 * risk_lambda * decision_depth**2 * recent_variance
