"""Price formation: agents' decisions aggregate into net demand, which moves the price.

    log p[t+1] = log p[t] + log(1 + r_fundamental[t+1]) + impact * net_demand[t] + noise + log(1 + shock)

`net_demand` is the mean of decision_depth / 10 over the agents trading the asset, so it lies in
[-1, 1] and `impact` is the log-price move when every agent buys with full conviction. The return
is computed as `r_f + (1 + r_f) * (exp(extra) * (1 + shock) - 1)`, the same quantity written so
that with no impact, noise or shock the simulated return *is* the data's return, bit for bit.
This is a linear price-impact rule, not an order book; a call auction or a book can replace
`clear` behind the same inputs and outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Clearing:
    """One asset's market outcome for one step."""

    price: float             # price the agents decided at (currency units)
    net_demand: float        # mean decision_depth / 10, in [-1, 1]
    volume: float            # mean |decision_depth| / 10, in [0, 1]
    next_price: float        # currency units
    simulated_return: float  # next_price / price - 1


def clear(
    price: float,
    fundamental_return: float,
    decisions: Sequence[float],
    *,
    impact: float,
    noise: float = 0.0,
    shock: float = 0.0,
) -> Clearing:
    """Clear one asset: `noise` is this step's drawn log-return noise, `shock` an event's return."""
    n = max(len(decisions), 1)
    net_demand = sum(decisions) / 10.0 / n
    volume = sum(abs(d) for d in decisions) / 10.0 / n
    extra = impact * net_demand + noise
    simulated_return = fundamental_return + (1.0 + fundamental_return) * (math.exp(extra) * (1.0 + shock) - 1.0)
    return Clearing(price, net_demand, volume, price * (1.0 + simulated_return), simulated_return)
