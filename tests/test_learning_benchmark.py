"""The learning benchmark's held-out mirror: it must negate what the agent reads and what it is paid on."""

from __future__ import annotations

from benchmarks.learning import MarketPrompts


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
