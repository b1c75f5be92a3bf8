"""Stylized facts: the real S&P 500 shows them, iid Gaussian noise does not."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.stylized_facts import (
    MAX_LAG,
    SP500_LABEL,
    hill_tail_index,
    sp500_sample,
    stylized_facts,
    stylized_facts_table,
)


@pytest.fixture(scope="module")
def sp500_facts() -> dict:
    returns, volume = sp500_sample()
    return stylized_facts(returns, volume)


def test_sp500_returns_have_fat_tails(sp500_facts):
    assert sp500_facts["observations"] == 5030
    assert sp500_facts["excess_kurtosis"] > 3.0  # measured: 8.34
    assert 2.0 < sp500_facts["hill_tail_index"] < 4.0  # measured: 2.94


def test_sp500_returns_are_nearly_uncorrelated_but_their_magnitudes_cluster(sp500_facts):
    # Measured: lags 1, 2 and 5 are small but significant and negative (-0.071, -0.049, -0.047),
    # a known feature of daily index returns over 1999-2018; the other seven lie inside the band.
    assert sp500_facts["significant_acf_returns"] <= 3
    assert np.all(np.abs(sp500_facts["acf_returns"]) < 0.1)
    # |r| autocorrelation is 0.24-0.34 at every lag 1-10, ten times the band (0.028)
    assert sp500_facts["significant_acf_abs_returns"] == MAX_LAG
    assert np.all(sp500_facts["acf_abs_returns"] > 0.2)


def test_sp500_shows_leverage_and_volume_volatility_correlation(sp500_facts):
    assert np.all(sp500_facts["leverage"] < 0)  # measured: -0.11 at lag 1
    assert sp500_facts["volume_volatility"] > 0.1  # measured: 0.20


def test_gaussian_noise_has_no_stylized_facts():
    noise = np.random.default_rng(0).normal(0.0, 0.01, 5000)
    facts = stylized_facts(noise)
    assert abs(facts["excess_kurtosis"]) < 0.3  # standard error about sqrt(24 / n) = 0.07
    assert facts["significant_acf_returns"] <= 2
    assert facts["significant_acf_abs_returns"] <= 2
    assert np.isnan(facts["volume_volatility"])  # no volume given


def test_hill_estimator_recovers_a_pareto_tail_index():
    pareto = 1.0 + np.random.default_rng(0).pareto(3.0, 20_000)  # P(X > x) = x^-3
    assert hill_tail_index(pareto) == pytest.approx(3.0, rel=0.1)


def test_short_or_flat_series_give_nan_rather_than_errors():
    for series in ([], [0.01], np.zeros(50)):
        facts = stylized_facts(series, np.ones(len(series)))
        assert np.isnan(facts["excess_kurtosis"])
        assert np.isnan(facts["significant_acf_abs_returns"])


def test_comparison_table_has_one_column_per_series(sp500_facts):
    noise = stylized_facts(np.random.default_rng(1).normal(0.0, 0.01, 500))
    table = stylized_facts_table({SP500_LABEL: sp500_facts, "run A": noise})
    assert list(table.columns) == [SP500_LABEL, "run A"]
    assert table.loc["excess kurtosis", SP500_LABEL] == pytest.approx(8.336, abs=1e-3)
    assert table.loc[f"significant ACF |r|, lags 1-{MAX_LAG}", SP500_LABEL] == MAX_LAG
