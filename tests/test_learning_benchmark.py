"""The learning benchmark's market: the held-out mirror must negate what the agent reads and what it is paid
on, and the pay must be the scenario reward with the variance known that day."""

from __future__ import annotations

import re
import statistics
from dataclasses import replace

import pytest

from benchmarks.learning import GAINS, QUICK, MarketPrompts, report, run


class EchoChat:
    """Stands in for the LLM's chat template: the benchmark only needs the user message here."""

    def chat_prompt(self, system: str, user: str) -> str:
        return user


def factor_values(prompt: str) -> list[float]:
    line = next(line for line in prompt.splitlines() if line.startswith("Fundamental factors:"))
    return [float(item.split("=")[1]) for item in line.removeprefix("Fundamental factors: ").rstrip(".").split(", ")]


def test_a_mirrored_state_negates_every_factor_and_the_next_return():
    market = MarketPrompts(EchoChat(), seed=0, signal={"fundamental": 0.6}, n_days=30)
    date = market.dates[5]
    original, mirrored = (market.prompt(date, ("fundamental",), mirrored=flag) for flag in (False, True))
    assert factor_values(mirrored) == [-value for value in factor_values(original)]
    assert any(value != 0 for value in factor_values(original))
    assert market.next_return(date, mirrored=True) == -market.next_return(date) != 0
    assert original.splitlines()[0] == mirrored.splitlines()[0]  # the price line is left as it is


def test_ask_replaces_only_the_closing_instruction():
    market = MarketPrompts(EchoChat(), seed=0, signal={"fundamental": 0.6}, n_days=30)
    date = market.dates[5]
    plain = market.prompt(date, ("fundamental",), mirrored=True)
    asked = market.prompt(date, ("fundamental",), mirrored=True, ask="Name the factor behind {asset}'s move.")
    assert asked.splitlines()[:-1] == plain.splitlines()[:-1]
    assert asked.splitlines()[-1] == "Name the factor behind SYN0's move." != plain.splitlines()[-1]
    assert factor_values(asked) == list(market.factors(date, ("fundamental",), mirrored=True)["value"].round(2))


def test_the_benchmark_pays_the_scenario_reward_with_the_variance_known_that_day():
    from benchmarks.learning import Settings
    from training.rewards import VARIANCE_WINDOW

    market = MarketPrompts(EchoChat(), seed=0, signal={"fundamental": 0.6}, n_days=40)
    date = market.dates[VARIANCE_WINDOW + 5]
    returns = market.data.prices.set_index("date")["return"]
    known = returns.loc[:date].iloc[-VARIANCE_WINDOW:]
    assert market.variance_at(date) == pytest.approx(known.var(), rel=1e-9)
    config = Settings().training.model_copy(update={"reward": "risk_adjusted"})
    linear = market.next_return(date) * 10.0
    penalty = 0.5 * config.risk_aversion * 0.5 * 100.0 * known.var()  # risk_preference 0.5, depth 10
    assert market.reward(date, 10.0, config) == pytest.approx(linear - penalty, rel=1e-9)
    assert market.reward(date, 10.0, config, mirrored=True) == pytest.approx(-linear - penalty, rel=1e-9)
    assert market.reward(date, 10.0, config.model_copy(update={"reward": "linear"})) == pytest.approx(linear, rel=1e-12)
    assert penalty > 0


def test_balanced_training_states_pair_each_date_with_its_mirror():
    import numpy as np

    from benchmarks.learning import Settings, training_states

    market = MarketPrompts(EchoChat(), seed=0, signal={"fundamental": 0.6}, n_days=40)
    states = training_states(market.dates, Settings(states=8, balanced_training=True), np.random.default_rng(0))
    assert len(states) == 8 and len({date for date, _ in states}) == 4
    assert [mirrored for _, mirrored in states] == [False, True] * 4
    assert sum(market.next_return(date, mirrored) for date, mirrored in states) == pytest.approx(0.0, abs=1e-15)
    plain = training_states(market.dates, Settings(states=8, balanced_training=False), np.random.default_rng(0))
    assert len({date for date, _ in plain}) == 8 and not any(mirrored for _, mirrored in plain)
    with pytest.raises(ValueError, match="even number of states"):
        training_states(market.dates, Settings(states=7, balanced_training=True), np.random.default_rng(0))


def test_insample_evaluation_scores_the_train_dates_before_and_after_training(tiny_model_dir):
    settings = replace(QUICK, model=str(tiny_model_dir), insample=True, kl_examples=2, train_dates=12, heldout_dates=6, iterations=1, states=2)
    result = run(settings)
    market = MarketPrompts(EchoChat(), seed=0, signal={"fundamental": settings.signal}, n_days=settings.train_dates + settings.heldout_dates + 2)
    train_mean = statistics.fmean(market.next_return(date) for date in market.dates[: settings.train_dates])
    for agent in result["agents"]:
        assert agent["insample_before"]["heldout_mean_return"] == pytest.approx(train_mean)  # the mean return of the dates scored
        assert agent["insample_after"]["heldout_mean_return"] == pytest.approx(train_mean)
        assert agent["before"]["heldout_mean_return"] != pytest.approx(train_mean)
    assert report(result).count("on the train dates") == len(result["agents"])


def test_sign_probe_labels_follow_the_planted_factor_and_flip_with_the_mirror():
    from benchmarks.sign_probe import SIGNAL_FACTOR, factor_value, label

    market = MarketPrompts(EchoChat(), seed=0, signal={"fundamental": 0.6}, n_days=40)
    labels = []
    for date in market.dates[:20]:
        prompt = market.prompt(date, ("fundamental",))
        value = float(re.search(rf"{SIGNAL_FACTOR}=([+-][0-9.]*[0-9])", prompt).group(1))  # as the agent reads it
        assert factor_value(market, date) == pytest.approx(value, abs=0.005)  # the value the prompt shows, unrounded
        labels.append(label(factor_value(market, date)))
        assert labels[-1] == ("+5" if value > 0 else "-5")
        assert label(factor_value(market, date, mirrored=True)) == ("-5" if value > 0 else "+5")
    assert set(labels) == {"+5", "-5"}


def test_pool_summarises_runs_on_different_seeds_as_one_and_refuses_other_settings(tmp_path):
    import json

    from benchmarks.learning import pool

    metrics = (*GAINS, "belief_kl", "belief_text_share")

    def result(seeds, corr_after, settings=None):
        extra = {"heldout_mean_return": 0.0, "beliefs": []}
        agents = [{"seed": seed, "arm": arm, "before": {**dict.fromkeys(metrics, 0.0), **extra}, "after": {**dict.fromkeys(metrics, 0.0), **extra, "corr": corr_after * share}}
                  for seed in seeds for arm, share in (("treated", 1.0), ("control", 0.25))]
        return {"settings": {"seeds": seeds, "iterations": 10, **(settings or {})}, "seconds": 5.0, "agents": agents}

    paths = {}
    for name, data in {"a": result([0, 1], 0.1), "b": result([2], -0.3), "other": result([3], 0.0, {"iterations": 5}), "again": result([1], 0.0)}.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    pooled = pool([paths["a"], paths["b"]])
    assert pooled["settings"]["seeds"] == [0, 1, 2] and pooled["seconds"] == 10.0
    gains = pooled["summary"]["treated"]["corr_gain"]
    assert gains["values"] == [0.1, 0.1, -0.3] and gains["mean"] == pytest.approx(-0.1 / 3)
    # per seed, the treated gain less its control twin's
    assert pooled["summary"]["treated_minus_control"]["corr_gain"]["values"] == pytest.approx([0.075, 0.075, -0.225])
    assert "treated_minus_control headline: corr gain -0.0250" in report(pooled)
    with pytest.raises(SystemExit, match="iterations"):
        pool([paths["a"], paths["other"]])
    with pytest.raises(SystemExit, match="share seeds"):
        pool([paths["a"], paths["again"]])
