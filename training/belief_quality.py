"""Is RL keeping the beliefs beliefs? Two measures, reported beside every learning figure.

A probe showed the failure they guard against: rewarded on the decision alone, SmolLM2's beliefs
turned into echoes of the prompt's numbers while the decision/return correlation rose.

- **belief KL**: how far the adapter has moved the *text*, per belief token. `belief_kl` is the
  exact KL(pi || pi_base) over the whole vocabulary at each belief position, averaged over belief
  tokens, where pi is the adapted model, pi_base the base model (adapter disabled), both under the
  decoding that wrote the belief (the agent's temperature; end-of-sequence banned). In nats per
  token: 0 is the base model's own voice. Training phases report a cheaper figure in the same
  units: the sampled-token estimate k3 of the same KL, averaged over the belief tokens the phase
  trained on (see training/rl.py).
- **belief text share**: the share of beliefs that read as sentences about the market, by a
  deliberately simple heuristic (`reads_as_market_text`): at least `MIN_WORDS` words; at least
  `MIN_WORD_SHARE` of the whitespace-separated tokens are words (not numbers, signs or symbols);
  at least one market word (price, return, buy, bearish, momentum, ...); not a loop (no word is
  more than a third of the words: "a high upside upside upside upside" fails); and, when the prompt is given, it copies at most one of the prompt's
  numbers per `WORDS_PER_ECHO` words (so "value_score=+1.76 and earnings_yield=+3.50 mean rising
  prices" is an echo, "the value score of +1.76 suggests the stock is undervalued" is not). It judges form, not truth: "Momentum is fading and I expect a small
  decline tomorrow." passes whether or not momentum is fading.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from agents.decoding import split_tokens
from agents.scoring import score

MIN_WORDS = 4
MIN_WORD_SHARE = 0.75
WORDS_PER_ECHO = 5
MAX_REPEAT_SHARE = 1 / 3
MARKET_STEMS = (
    "market", "stock", "share", "price", "pric", "return", "buy", "sell", "bull", "bear", "rise", "rising", "rose",
    "fall", "fell", "drop", "declin", "gain", "loss", "los", "trend", "momentum", "valu", "earning", "growth",
    "grow", "risk", "volatil", "sentiment", "news", "rate", "inflation", "yield", "fundamental", "technical",
    "macro", "forecast", "outlook", "invest", "position", "rally", "crash", "recover", "upside", "downside",
    "profit", "econom", "asset", "trad", "demand", "supply", "higher", "lower", "increas", "decreas", "strong",
    "weak", "expect", "tomorrow", "signal", "up", "down", "long", "short", "undervalu", "overvalu", "cautious",
    "optimis", "pessimis", "confiden", "uncertain", "analyst", "credit", "spread", "dividend", "revenue",
)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?%?")


def _is_word(token: str) -> bool:
    letters = sum(character.isalpha() for character in token)
    return letters >= 1 and letters >= 0.6 * len(token.strip(".,;:!?()\"'"))


def reads_as_market_text(belief: str, prompt: str | None = None) -> bool:
    """True if `belief` reads as a sentence about the market (see the module docstring)."""
    tokens = belief.split()
    words = [word.lower() for word in _WORD.findall(belief)]
    word_tokens = [token for token in tokens if _is_word(token)]
    if len(word_tokens) < MIN_WORDS or len(word_tokens) < MIN_WORD_SHARE * len(tokens):
        return False
    if max(Counter(words).values(), default=0) > MAX_REPEAT_SHARE * len(words):
        return False
    if not any(word.startswith(MARKET_STEMS) for word in words):
        return False
    if prompt is not None:
        prompt_numbers = {number.strip("+-%") for number in _NUMBER.findall(prompt)}
        echoed = [number for number in _NUMBER.findall(belief) if number.strip("+-%") in prompt_numbers]
        if len(echoed) * WORDS_PER_ECHO > len(words):
            return False
    return True


def belief_text_share(beliefs: list[str], prompts: list[str] | None = None) -> float | None:
    """Share of `beliefs` that read as market text; None for no beliefs."""
    if not beliefs:
        return None
    prompts = prompts if prompts is not None else [None] * len(beliefs)
    return sum(reads_as_market_text(belief, prompt) for belief, prompt in zip(beliefs, prompts)) / len(beliefs)


def exact_token_kl(policy_logprobs: torch.Tensor, base_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(policy || base) at every position from two log-distributions, summed over the vocabulary."""
    return (policy_logprobs.exp() * (policy_logprobs - base_logprobs)).sum(-1)


@torch.no_grad()
def belief_kl(llm, agents: list[int], completions, temperatures: list[float], belief_tokens: int, batch_size: int = 8) -> list[float | None]:
    """Per completion, the mean exact KL of its belief tokens to the base model, in nats per token.

    `agents[i]` is the agent whose adapter completion i is scored under; the base model is the
    same rows with no adapter, both under the decoding that wrote the belief.
    """
    results: list[float | None] = []
    for start in range(0, len(completions), batch_size):
        chunk = completions[start:start + batch_size]
        parts = [split_tokens(llm.slot, belief_tokens, completion.completion_ids) for completion in chunk]
        arguments = ([completion.prompt_ids for completion in chunk], [part.belief_ids for part in parts], [part.marker_ids for part in parts])
        scale = torch.tensor(temperatures[start:start + batch_size], dtype=torch.float32)
        adapted = score(llm, *arguments, agents[start:start + batch_size], scale, keep_distributions=True)
        base = score(llm, *arguments, None, scale, keep_distributions=True)
        kl = exact_token_kl(adapted.belief_logits, base.belief_logits) * adapted.belief_mask
        counts = adapted.belief_mask.sum(-1)
        results += [float(total / count) if count > 0 else None for total, count in zip(kl.sum(-1), counts)]
    return results
