"""The forced decision slot: a free-text belief, then `Decision: <number>`, imposed token by token.

SmolLM2-135M, asked for free-form output, wrote a parseable decision only a third of the time. So
the model is never *asked* to produce the format; the format is imposed while decoding:

1. BELIEF: free text at the agent's own temperature. End-of-sequence tokens are banned (the
   belief must hand over to the decision), and so are newlines for the first few tokens. The
   belief ends at the first token that contains a newline, or when its token budget is spent.
2. MARKER: the tokens of `Decision: ` are forced (after `\\n` if the budget cut the belief short).
3. NUMBER: only tokens that keep the text a prefix of a *signed* number in [-10, 10] with at most
   one decimal (`+2.5`, `-3`, `+0`), then one stop. The sign is always written, so a short is one
   token away, as a long is: with the sign optional SmolLM2-135M never went short, and a policy
   cannot learn a choice it never makes. The number is drawn from the exact distribution over
   every spelling the slot allows (`agents/decision_tree.py`), at the agent's temperature.

Every decision is therefore a valid number in range by construction. `parse_decision` exists for
text that did not come through the slot (remote backends), and says why it fell back; those
fallbacks are counted and stored. Temperature 0 is greedy for that row.

This module holds what the slot knows about a tokenizer (`SlotVocabulary`), the belief's rules
(`belief_bans`), and the replay of a finished completion into its parts (`split_tokens`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

DECISION_MIN, DECISION_MAX = -10.0, 10.0
MARKER = "Decision: "
MIN_BELIEF_TOKENS = 3
_NUMBER_CHARS = set("+-.0123456789")


def _complete_numbers() -> set[str]:
    """Every accepted spelling of a decision: -10 ... +10, sign required, at most one decimal."""
    spellings: set[str] = set()
    for whole in range(11):
        decimals = [""] + ([".0"] if whole == 10 else [f".{d}" for d in range(10)])
        for decimal in decimals:
            for sign in ("-", "+"):
                spellings.add(f"{sign}{whole}{decimal}")
    return spellings


COMPLETE_NUMBERS = frozenset(_complete_numbers())
NUMBER_PREFIXES = frozenset(spelling[:i] for spelling in COMPLETE_NUMBERS for i in range(len(spelling) + 1))


@dataclass(frozen=True)
class SlotVocabulary:
    """What the slot needs to know about one tokenizer, computed once per model."""

    marker_ids: tuple[int, ...]            # `Decision: ` after a belief that ended with a newline
    newline_marker_ids: tuple[int, ...]    # `\nDecision: ` when the belief budget ran out
    stop_ids: tuple[int, ...]              # end-of-sequence tokens
    newline_ids: frozenset[int]            # every token whose text contains a newline
    number_tokens: dict[int, str]          # tokens made only of digits, signs and dots

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> SlotVocabulary:
        texts = tokenizer.batch_decode([[token] for token in range(len(tokenizer))])
        stop_ids = {tokenizer.eos_token_id}
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            token = tokenizer.convert_tokens_to_ids(special)
            if isinstance(token, int) and token != tokenizer.unk_token_id:
                stop_ids.add(token)
        return cls(
            marker_ids=tuple(tokenizer.encode(MARKER, add_special_tokens=False)),
            newline_marker_ids=tuple(tokenizer.encode("\n" + MARKER, add_special_tokens=False)),
            stop_ids=tuple(sorted(t for t in stop_ids if t is not None)),
            newline_ids=frozenset(i for i, text in enumerate(texts) if "\n" in text),
            number_tokens={i: text for i, text in enumerate(texts) if text and set(text) <= _NUMBER_CHARS},
        )

    def marker_after(self, belief_ids: list[int]) -> tuple[int, ...]:
        """The marker that follows a belief: `Decision: ` after a newline, else `\\nDecision: `."""
        return self.marker_ids if belief_ids and belief_ids[-1] in self.newline_ids else self.newline_marker_ids

    def belief_ends(self, token: int, length: int, budget: int) -> bool:
        """Whether a belief of `length` tokens whose last token is `token` is finished."""
        return token in self.newline_ids or length >= budget


def belief_bans(vocabulary: SlotVocabulary, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[2, vocab] bool: row 0 the tokens banned at the first `MIN_BELIEF_TOKENS` belief positions
    (stops and newlines), row 1 those banned later (stops)."""
    bans = torch.zeros((2, vocab_size), dtype=torch.bool, device=device)
    bans[:, list(vocabulary.stop_ids)] = True
    bans[0, sorted(vocabulary.newline_ids)] = True
    return bans


@dataclass(frozen=True)
class SlotParts:
    """A finished completion's tokens, split where the slot switched phase."""

    belief_ids: list[int]
    marker_ids: list[int]
    number_ids: list[int]      # the number's tokens and its stop token


def split_tokens(vocabulary: SlotVocabulary, belief_budget: int, completion_ids: list[int]) -> SlotParts:
    """Replay the slot over a completion's tokens: where the belief ended and the number began."""
    for length, token in enumerate(completion_ids, start=1):
        if vocabulary.belief_ends(token, length, belief_budget):
            belief = list(completion_ids[:length])
            marker = list(vocabulary.marker_after(belief))
            return SlotParts(belief, marker, list(completion_ids[length + len(marker):]))
    return SlotParts(list(completion_ids), [], [])


_NUMBER_AFTER_MARKER = re.compile(r"Decision:\s*([+-]?\d+(?:\.\d+)?)")


def split_completion(completion: str) -> tuple[str, str]:
    """(belief, text after the decision marker) of a completion."""
    head, _, tail = completion.rpartition("Decision:")
    if not _:
        return completion.strip(), ""
    return head.strip(), tail.strip()


def parse_decision(completion: str) -> tuple[float, str | None]:
    """The decision in a completion and why it fell back (None if it did not).

    Fallback reasons: `empty` (nothing at all), `truncated` (no decision marker), `non_numeric`
    (a marker but no number), `out_of_range` (a number outside [-10, 10], which is clipped).
    A fallback without a number decides 0: no position.
    """
    if not completion.strip():
        return 0.0, "empty"
    match = _NUMBER_AFTER_MARKER.search(completion)
    if match is None:
        return 0.0, ("non_numeric" if "Decision:" in completion else "truncated")
    value = float(match.group(1))
    if not DECISION_MIN <= value <= DECISION_MAX:
        return min(max(value, DECISION_MIN), DECISION_MAX), "out_of_range"
    return value, None


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded on the left to one width, as decoder-only generation and scoring want
    them: (ids, attention mask), both [rows, width] long tensors."""
    width = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        mask[row, width - len(sequence):] = 1
    return ids, mask
