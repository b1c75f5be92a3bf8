"""Belief quality: the market-text heuristic and the belief KL to the base model."""

from __future__ import annotations

import pytest
import torch

from agents.llm import LLM
from agents.lora import LoraSpec
from training.belief_quality import (
    belief_kl,
    belief_text_share,
    exact_token_kl,
    reads_as_market_text,
)

PROMPT = "Fundamental factors: value_score=+1.76, earnings_yield=+3.50. In one sentence, state your belief."


@pytest.mark.parametrize("belief", [
    "Momentum is fading and I expect a small decline tomorrow.",
    "The value score of +1.76 suggests the stock is undervalued, so I expect a rise.",
    "I think the price will go up because earnings look strong.",
    "Bearish: sentiment is weak and the market may fall.",
])
def test_sentences_about_the_market_read_as_text(belief):
    assert reads_as_market_text(belief, PROMPT)


@pytest.mark.parametrize("belief", [
    "+1.76 + 3.5 What is the next one to go.",     # numbers, then a question about nothing
    "+1.76 +3.50 +1.76 +3.50",                       # an echo of the prompt's numbers
    "1.76, 3.5, 2.1, 0.4, 9.9 up",                   # mostly numbers
    "buy buy buy buy buy buy",                       # a loop
    "My belief is that it's a high upside upside upside upside upside upside",  # a loop after a start
    "The cat sat on the mat today.",                 # a sentence, but not about the market
    "Rise.",                                          # too short
    "市场 今天 会 上涨 很多",                           # words, but none the heuristic can read (no crash)
    "",
])
def test_numbers_echoes_loops_and_off_topic_text_do_not(belief):
    assert not reads_as_market_text(belief, PROMPT)


def test_echoed_prompt_numbers_count_against_a_belief_only_when_the_prompt_is_given():
    echo = "value_score=+1.76 and earnings_yield=+3.50 mean rising prices"
    assert reads_as_market_text(echo) and not reads_as_market_text(echo, PROMPT)


def test_belief_text_share_is_the_share_of_text_beliefs():
    beliefs = ["Momentum is fading and I expect a small decline tomorrow.", "+1.76 + 3.5 What is the next one to go."]
    assert belief_text_share(beliefs, [PROMPT, PROMPT]) == 0.5
    assert belief_text_share([]) is None


def test_exact_token_kl_is_zero_for_equal_distributions_and_matches_the_definition():
    policy, base = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), -1), torch.log_softmax(torch.tensor([[0.0, 1.0, 0.0]]), -1)
    assert float(exact_token_kl(policy, policy)) == pytest.approx(0.0, abs=1e-7)
    p, q = policy.exp(), base.exp()
    assert float(exact_token_kl(policy, base)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)


def test_belief_kl_is_zero_for_a_fresh_adapter_and_grows_when_the_adapter_moves(tiny_model_dir):
    llm = LLM.load(str(tiny_model_dir), device="cpu", dtype="float32")
    llm.attach_adapters(1, LoraSpec(8, 16.0, ("q_proj", "v_proj")))
    texts = [llm.chat_prompt("You are an investor.", f"Day {day}.") for day in range(3)]
    completions = llm.generate(texts, [1.0] * 3, [0] * 3, belief_tokens=6, seed=0)
    assert belief_kl(llm, [0] * 3, completions, [1.0] * 3, belief_tokens=6) == pytest.approx([0.0] * 3, abs=1e-6)
    with torch.no_grad():
        for param in llm.adapters.parameters():
            param.add_(0.5)
    moved = belief_kl(llm, [0] * 3, completions, [1.0] * 3, belief_tokens=6)
    assert all(value > 1e-3 for value in moved)
