import pytest

from market.payoff import reward


def test_linear_reward_matches_the_users_examples():
    assert reward("linear", 0.05, 7.5) == pytest.approx(0.375)
    assert reward("linear", -0.03, 7.5) == pytest.approx(-0.225)


def test_risk_adjusted_reward_has_an_interior_optimum():
    expected_return, variance = 0.005, 1e-4
    payoff = {d: reward("risk_adjusted", expected_return, d, risk_preference=0.5, risk_aversion=20.0, recent_variance=variance) for d in range(11)}
    assert max(payoff, key=payoff.get) == 5  # d* = E[r] / (lambda var) = 0.005 / (10 * 1e-4)


def test_risk_lover_gets_the_linear_reward():
    assert reward("risk_adjusted", 0.01, 8.0, risk_preference=1.0, risk_aversion=20.0, recent_variance=1e-4) == pytest.approx(0.08)
