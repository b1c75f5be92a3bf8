"""The learning benchmark: its mirror negates what the agent reads and is paid on, its settings are
validated, and one seed's run works end to end on the tiny model."""

from __future__ import annotations

import pytest

from benchmarks.learning import (
    QUICK,
    Market,
    Settings,
    parse_settings,
    report,
    run_seed,
    summarise,
)
from core.errors import UserError
from core.overrides import override_model
from core.provenance import provenance


class EchoChat:
    """Stands in for the LLM's chat template: the benchmark only needs the user message here."""

    def chat_prompt(self, system: str, user: str) -> str:
        return user


def factor_values(prompt: str) -> list[float]:
    line = next(line for line in prompt.splitlines() if line.startswith("Fundamental factors:"))
    return [float(item.split("=")[1]) for item in line.removeprefix("Fundamental factors: ").rstrip(".").split(", ")]


def test_a_mirrored_state_negates_every_factor_and_the_next_return():
    market = Market(EchoChat(), 0, Settings(train_dates=20, heldout_dates=8))
    date = market.dates[5]
    original, mirrored = (market.prompt(date, ("fundamental",), mirrored=flag) for flag in (False, True))
    assert factor_values(mirrored) == [-value for value in factor_values(original)]
    assert any(value != 0 for value in factor_values(original))
    assert market.next_return(date, mirrored=True) == -market.next_return(date) != 0
    assert original.splitlines()[0] == mirrored.splitlines()[0]  # the price line is left as it is


def test_settings_overrides_go_through_the_schema():
    settings = parse_settings(["training.trust=0.5", "phases=3", "seeds=[1, 2]"])
    assert settings.training.trust == 0.5 and settings.phases == 3 and settings.seeds == [1, 2]
    with pytest.raises(Exception, match="trust"):
        parse_settings(["training.trust=-1"])
    with pytest.raises(Exception, match="extra|trsut"):
        parse_settings(["training.trsut=0.5"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_settings(["phases"])


def test_setting_one_training_key_keeps_the_benchmarks_other_training_settings():
    default = parse_settings([]).training
    assert (default.max_samples, default.epochs, default.every) == (0, 4, 1)  # the benchmark's, not TrainingConfig's
    settings = parse_settings(["training.beliefs_per_state=2"])
    assert settings.training.beliefs_per_state == 2
    assert settings.training.model_dump(exclude={"beliefs_per_state"}) == default.model_dump(exclude={"beliefs_per_state"})
    assert parse_settings(["training.epochs=2"], QUICK).states == QUICK["states"]


def test_the_apo_benchmarks_apo_section_keeps_its_own_defaults_when_one_key_is_set():
    from benchmarks.apo import Settings as ApoSettings

    settings = override_model(ApoSettings(), ["apo.beam=2"])
    assert settings.apo.beam == 2 and settings.apo.candidates == ApoSettings().apo.candidates == 3


def test_one_seed_trains_and_reports_both_arms_on_the_tiny_model(tiny_model_dir):
    # significance 0: a smoke run's few held-back states could not pass the test, and every arm must move here
    settings = parse_settings([f"model={str(tiny_model_dir)!r}", "training.learning_rate=0.02", "training.significance=0"], QUICK)
    agents = run_seed(settings, 0)
    assert [agent["arm"] for agent in agents] == ["treated", "control"]
    for agent in agents:
        assert agent["after"]["belief_kl"] > 1e-4  # the adapter moved the beliefs' distribution
        assert agent["after"]["corr_expected"] != agent["before"]["corr_expected"]
        assert len(agent["after"]["beliefs"]) == 3 and len(agent["training_log"]) == settings.phases
        assert agent["training_log"][0]["epochs"] >= 1
    result = {"settings": settings.model_dump(), "provenance": provenance(), "seconds": 1.0, "agents": agents, "summary": summarise(agents)}
    assert len(result["provenance"]["commit"]) == 40 and result["provenance"]["packages"]["torch"]
    passed = int(agents[0]["after"]["corr_expected"] >= 0.35)
    assert f"treated seeds with held-out corr(E[d], r) >= 0.35 after training: {passed}/1" in report(result)
    market = Market(EchoChat(), 0, settings)
    for agent in agents:  # out of sample against baselines, on exactly the held-out states' returns
        series, figures = agent["series"], agent["out_of_sample"]
        assert series["returns"] == [market.next_return(date, mirrored) for date, mirrored in market.heldout]
        assert set(figures) == {"trained", "untrained", "factor", "momentum", "buy_and_hold"}
        assert figures["buy_and_hold"]["mean_pay"][0] == pytest.approx(0.0, abs=1e-12)  # mirrored pairs: a bullish policy earns exactly 0
        assert series["trained"][0] == [float(value) for value in series["trained"][0]] and len(series["trained"][0]) == len(market.heldout)
        value, low, high = figures["trained"]["mean_pay"]
        assert low <= value <= high and figures["trained"]["corr_expected"][0] == pytest.approx(agent["after"]["corr_expected"], abs=1e-9)
        assert figures["untrained"]["corr_expected"][0] == pytest.approx(agent["before"]["corr_expected"], abs=1e-9)
    assert "out of sample against baselines" in report(result)


def test_the_momentum_and_factor_baselines_read_what_the_market_shows():
    settings = Settings(train_dates=30, heldout_dates=4)
    market = Market(EchoChat(), 3, settings)
    date = market.heldout[0][0]
    position = market.closes.index.get_loc(date)
    past = market.closes.iloc[position] / market.closes.iloc[position - 20] - 1.0
    assert market.momentum(date) == 10.0 * (1 if past > 0 else -1) and market.momentum(date, mirrored=True) == -market.momentum(date)
    first = factor_values(market.prompt(date, ("fundamental",)))[0]
    assert market.first_factor(date, ("fundamental",)) == 10.0 * (1 if first > 0 else -1 if first < 0 else 0)
    assert market.first_factor(date, ("fundamental",), mirrored=True) == -market.first_factor(date, ("fundamental",))
