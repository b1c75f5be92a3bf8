"""The pay of every decision an agent could have made on a past day, known once its return is.

Once day t's return r is realised, what any decision d would have earned that day is known
exactly: the market's payoff rule at r (market/payoff.py), for each of the 201 decisions the slot
can write. That holds while one agent's own price impact is small, because the return is held
fixed while the decision varies. A decision `delta` points different moves net demand (the mean
position over N agents) by delta / (10 N), so the price by `impact * delta / (10 N)` more: with
base.toml's impact 0.002 and 6 agents, ten points move the price by 0.033 %, against daily moves
of about 1 %. With impact 0 (the learning benchmark, replayed data) it is exact.

The trainer learns from standardised excess pay: each sample's return less the mean return of
the agent's samples in the phase, over their standard deviation, for a full position:

    Q(d) = payoff(r - mean r, d) / (std r * 10)       (linear: z * d / 10, in [-|z|, |z|])

Subtracting the mean removes the window's trend, which pays plain bullishness on a rising window
and only luck; dividing by the spread makes the step size mean the same on calm and wild data.
Q is linear in the excess return, `Q(d) = slope * d - penalty(d)` with `slope = (r - mean r) /
(std r * 10)` and a penalty (the risk-adjusted payoff's) that does not depend on r, so the trainer
can also measure returns against a smaller batch's mean by shifting the slope alone.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.decision_tree import DECISION_VALUES
from agents.decoding import DECISION_MAX
from market.payoff import reward


def standardised_pay(returns: list[float], risk_preferences: list[float], variances: list[float], *, kind: str, risk_aversion: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q of every decision on every sample's day [samples, 201], each day's slope [samples]);
    all 0 if the returns never vary."""
    realised = np.asarray(returns, dtype=float)
    spread = realised.std() if len(realised) else 0.0
    if spread == 0.0:
        return torch.zeros((len(realised), len(DECISION_VALUES))), torch.zeros(len(realised))
    depths = np.asarray(DECISION_VALUES)[None, :]
    pay = reward(kind, (realised - realised.mean())[:, None], depths, risk_preference=np.asarray(risk_preferences)[:, None],
                 risk_aversion=risk_aversion, recent_variance=np.asarray(variances)[:, None])
    slope = (realised - realised.mean()) / (spread * DECISION_MAX)
    return torch.tensor(pay / (spread * DECISION_MAX), dtype=torch.float32), torch.tensor(slope, dtype=torch.float32)
