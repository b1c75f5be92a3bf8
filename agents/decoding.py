"""The forced decision slot: free-text belief, then `Decision: <number>` by constrained decoding.

SmolLM2-135M, asked for free-form output, wrote a parseable decision only a third of the time. So
the model is never *asked* to produce the format; the format is imposed token by token in one
`generate` call by `DecisionSlotProcessor`, a logits processor with one small state machine per
sequence:

1. BELIEF — free text at the agent's own temperature. End-of-sequence tokens are banned (the
   belief must hand over to the decision), and so are newlines for the first few tokens. The belief
   ends at the first token that contains a newline, or when its token budget is spent.
2. MARKER — the tokens of `Decision: ` are forced (after `\\n` if the budget cut the belief short).
3. NUMBER — only tokens that keep the text a prefix of a *signed* number in [-10, 10] with at
   most one decimal are allowed (`+2.5`, `-3`, `+0`); end-of-sequence is allowed once the text is
   a complete number. The number is sampled from the model's own distribution over what is
   allowed, at the agent's temperature, so the decision stays a stochastic policy that RL can
   shape. The sign is always written, so a short is one token away, as a long is: with the sign
   optional SmolLM2-135M began every number with a digit and never went short (0 of 96 decisions
   on the learning benchmark's seed-3 train dates), which left half the action space out of the
   policy's reach; a policy gradient cannot raise a probability that is never sampled. With the
   sign required, 10 % of its decisions on seeds 3 and 4's train dates are short.
4. DONE — end-of-sequence only.

Every decision is therefore a valid number in range by construction. `parse_decision` still
exists for text that did not come through the slot (truncated generations, other backends), and
says why it fell back; those fallbacks are counted and stored.

Per-sequence temperature is applied here (generate's own temperature is left at 1.0), so agents
with different temperatures share one batch; temperature 0 means greedy for that sequence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

DECISION_MIN, DECISION_MAX = -10.0, 10.0
MARKER = "Decision: "
MIN_BELIEF_TOKENS = 3
_NUMBER_CHARS = set("+-.0123456789")


def _complete_numbers() -> set[str]:
    """Every accepted spelling of a decision: -10 ... +10, sign required, at most one decimal."""
    spellings: set[str] = set()
    for whole in range(0, 11):
        decimals = [""] + ([".0"] if whole == 10 else [f".{d}" for d in range(10)])
        for decimal in decimals:
            for sign in ("-", "+"):
                spellings.add(f"{sign}{whole}{decimal}")
    return spellings


COMPLETE_NUMBERS = frozenset(_complete_numbers())
NUMBER_PREFIXES = frozenset(spelling[:i] for spelling in COMPLETE_NUMBERS for i in range(len(spelling) + 1))
MAX_NUMBER_TOKENS = max(len(spelling) for spelling in COMPLETE_NUMBERS)


@dataclass(frozen=True)
class SlotVocabulary:
    """What the slot needs to know about one tokenizer, computed once per model."""

    marker_ids: tuple[int, ...]            # `Decision: ` after a newline
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

    def max_new_tokens(self, belief_tokens: int) -> int:
        return belief_tokens + len(self.newline_marker_ids) + MAX_NUMBER_TOKENS + 1

    @cached_property
    def sign_tokens(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The tokens a number may begin with (`+`, `-`, or a token such as `+1` in a tokenizer
        that has one) and the sign each one writes (+1 or -1), in token order; computed once."""
        first = sorted((token, 1 if text[0] == "+" else -1) for token, text in self.number_tokens.items()
                       if text in NUMBER_PREFIXES and text[0] in "+-")
        return tuple(token for token, _ in first), tuple(sign for _, sign in first)


BELIEF, MARKER_PHASE, NUMBER, DONE = "belief", "marker", "number", "done"


@dataclass
class SlotState:
    """Where one sequence is in belief -> marker -> number -> done."""

    vocabulary: SlotVocabulary
    belief_budget: int
    phase: str = BELIEF
    belief_tokens: int = 0
    forced: list[int] = field(default_factory=list)  # marker tokens still to force
    number: str = ""

    def advance(self, token: int) -> str:
        """Consume one generated token; return the phase it was generated in."""
        phase, vocabulary = self.phase, self.vocabulary
        if phase == BELIEF:
            self.belief_tokens += 1
            if token in vocabulary.newline_ids:
                self.phase, self.forced = MARKER_PHASE, list(vocabulary.marker_ids)
            elif self.belief_tokens >= self.belief_budget:
                self.phase, self.forced = MARKER_PHASE, list(vocabulary.newline_marker_ids)
        elif phase == MARKER_PHASE:
            self.forced.pop(0)
            if not self.forced:
                self.phase = NUMBER
        elif phase == NUMBER:
            if token in vocabulary.stop_ids:
                self.phase = DONE
            else:
                self.number += vocabulary.number_tokens.get(token, "")
        return phase

    def allowed(self) -> list[int] | None:
        """Tokens allowed next, or None for free belief text."""
        if self.phase == BELIEF:
            return None
        if self.phase == MARKER_PHASE:
            return [self.forced[0]]
        if self.phase == NUMBER:
            allowed = [token for token, text in self.vocabulary.number_tokens.items() if self.number + text in NUMBER_PREFIXES]
            if self.number in COMPLETE_NUMBERS or not allowed:
                allowed += list(self.vocabulary.stop_ids)
            return allowed
        return list(self.vocabulary.stop_ids)


class DecisionSlotProcessor(LogitsProcessor):
    """Imposes belief -> `Decision: ` -> number on every row of a `generate` call.

    `temperatures` has one entry per row of the batch. `phase=NUMBER` starts every row at the
    number, for inputs that already end with a belief and the marker (`LLM.redecide`).
    """

    def __init__(self, vocabulary: SlotVocabulary, prompt_length: int, belief_tokens: int, temperatures: list[float], phase: str = BELIEF):
        self.prompt_length = prompt_length
        self.states = [SlotState(vocabulary, belief_tokens, phase=phase) for _ in temperatures]
        self.stop_ids = torch.tensor(vocabulary.stop_ids)
        self.newline_ids = torch.tensor(sorted(vocabulary.newline_ids))
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32).clamp_min(1e-6)[:, None]
        self.greedy = torch.tensor([t == 0.0 for t in temperatures])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_length:
            for state, token in zip(self.states, input_ids[:, -1].tolist()):
                state.advance(token)
        scores = scores.float()
        device = scores.device
        # One mask for the whole batch: a few tensor ops per token, whatever the batch size.
        banned = torch.zeros_like(scores, dtype=torch.bool)
        constrained_rows, constrained_ids, young_rows = [], [], []
        for row, state in enumerate(self.states):
            allowed = state.allowed()
            if allowed is None:  # free belief text: no ending yet, no newline too early
                if state.belief_tokens < MIN_BELIEF_TOKENS:
                    young_rows.append(row)
            else:
                constrained_rows.append(row)
                constrained_ids.append(allowed)
        banned[:, self.stop_ids.to(device)] = True
        if young_rows:
            banned[torch.tensor(young_rows, device=device)[:, None], self.newline_ids.to(device)] = True
        if constrained_rows:
            rows = torch.tensor([r for r, ids in zip(constrained_rows, constrained_ids) for _ in ids], device=device)
            ids = torch.tensor([i for ids in constrained_ids for i in ids], device=device)
            banned[torch.tensor(constrained_rows, device=device)] = True
            banned[rows, ids] = False
        scores = scores.masked_fill(banned, -math.inf) / self.temperatures.to(device)
        greedy = self.greedy.to(device)
        if greedy.any():
            best = scores.argmax(dim=-1, keepdim=True)
            one_hot = torch.full_like(scores, -math.inf).scatter_(1, best, 0.0)
            scores = torch.where(greedy[:, None], one_hot, scores)
        return scores


@dataclass(frozen=True)
class SlotTrace:
    """A finished completion, split by phase."""

    token_ids: list[int]       # up to and including the first stop token
    trainable: list[bool]      # False for the forced marker tokens
    belief_ids: list[int]
    number: str
    finished: bool             # reached a stop token after a number


def number_start(vocabulary: SlotVocabulary, belief_tokens: int, completion_ids: list[int]) -> int:
    """Index of a completion's first number token: what comes before it is the belief and the marker."""
    state = SlotState(vocabulary, belief_tokens)
    for index, token in enumerate(completion_ids):
        if state.phase == NUMBER:
            return index
        state.advance(token)
    return len(completion_ids)


def trace_completion(vocabulary: SlotVocabulary, belief_tokens: int, generated: list[int]) -> SlotTrace:
    """Replay the slot over generated ids (pads after the stop token are dropped)."""
    state = SlotState(vocabulary, belief_tokens)
    kept, trainable, belief_ids = [], [], []
    for token in generated:
        if state.phase == DONE:
            break
        phase = state.advance(token)
        kept.append(token)
        trainable.append(phase != MARKER_PHASE)
        if phase == BELIEF:
            belief_ids.append(token)
    return SlotTrace(kept, trainable, belief_ids, state.number, state.phase == DONE)


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
