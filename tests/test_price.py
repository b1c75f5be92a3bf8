import math

import numpy as np
import pytest

from market.price import clear


def test_impact_zero_replays_the_data_returns_exactly():
    rng = np.random.default_rng(0)
    price = 100.0
    for fundamental_return in rng.normal(0, 0.02, 500):
        outcome = clear(price, float(fundamental_return), list(rng.uniform(-10, 10, 9)), impact=0.0)
        assert outcome.simulated_return == fundamental_return
        price = outcome.next_price


def test_buying_pressure_raises_the_price_by_the_impact():
    up = clear(100.0, 0.0, [10.0, 10.0], impact=0.01)
    down = clear(100.0, 0.0, [-10.0, -10.0], impact=0.01)
    assert up.net_demand == 1.0 and down.net_demand == -1.0
    assert math.log(up.next_price / 100.0) == pytest.approx(0.01)
    assert math.log(down.next_price / 100.0) == pytest.approx(-0.01)


def test_volume_counts_both_sides_and_net_demand_cancels():
    outcome = clear(50.0, 0.01, [5.0, -5.0], impact=0.5)
    assert outcome.net_demand == 0.0
    assert outcome.volume == pytest.approx(0.5)
    assert outcome.simulated_return == pytest.approx(0.01)


def test_shock_adds_its_return():
    outcome = clear(100.0, 0.0, [0.0], impact=0.0, shock=-0.05)
    assert outcome.simulated_return == pytest.approx(-0.05)
    assert outcome.next_price == pytest.approx(95.0)
