"""Teacher-forced passes: the decision tree on top of a belief, and the log-probabilities of beliefs.

This is the one place where π(d | prompt, belief) is computed. A pass feeds each row's *suffix*
(the tokens after its key/value cache, ending with the last marker token) and then the decision
tree's branch nodes, all in one forward call: suffix tokens attend causally, each tree node
attends to the row's whole prefix and its own ancestors (a 4-D attention mask, `tree_layout`).

- Generation calls `slot_pass` after sampling a belief: the cache is the decoding cache, the
  suffix the belief's last token and the marker.
- Training and evaluation `pack` each (prompt, belief) as one row with no cache (the suffix is
  the prompt, the belief and the marker), so the same row can be run in two halves: the frozen
  lower layers once (`Trunk`), the adapted upper layers in every epoch (agents/llm.py `run_layers`).

Only the tree's own tokens (digits, signs, point, stops) are projected through the LM head at
tree nodes, and the full vocabulary only where a belief token's probability is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.decoding import MIN_BELIEF_TOKENS

BANNED_LOGIT = -1e9  # finite: a banned token's probability is exactly 0 in fp32, and no inf - inf


@dataclass
class Layout:
    """Inputs of one tree pass: [rows, span + tree] tokens, each row's suffix right-padded to `span`."""

    ids: torch.Tensor          # [rows, span + fed nodes]
    mask: torch.Tensor         # [rows, 1, queries, cache width + queries] additive
    positions: torch.Tensor    # [rows, queries]
    lengths: torch.Tensor      # [rows] real suffix tokens
    span: int


def tree_layout(llm, suffixes: list[list[int]], cache_mask: torch.Tensor, next_positions: torch.Tensor, *, with_tree: bool = True) -> Layout:
    """Token ids, 4-D mask and position ids for suffixes (after a cache whose real tokens
    `cache_mask` marks, [rows, width]) followed by the decision tree's fed nodes (unless not `with_tree`)."""
    tree = llm.tree
    count, width = len(suffixes), cache_mask.shape[1]
    lengths = torch.tensor([len(suffix) for suffix in suffixes])
    span = int(lengths.max())
    fed = torch.tensor(tree.feed_tokens() if with_tree else [], dtype=torch.long)
    depths = torch.tensor(tree.feed_depths() if with_tree else [], dtype=torch.long)
    ids = torch.full((count, span + len(fed)), llm.pad_id, dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        ids[row, : len(suffix)] = torch.tensor(suffix)
    ids[:, span:] = fed
    # Position ids: suffix token i at next + i; a tree node of depth k at (last marker token) + k.
    offsets = torch.cat([torch.arange(span).expand(count, -1), (lengths - 1)[:, None] + depths[None, :]], dim=1)
    positions = next_positions.cpu()[:, None] + offsets
    # Who may attend to whom, [rows, queries, keys]: the cache where it is real; suffix causally;
    # tree nodes the whole suffix and their own ancestors. Padding queries attend only to themselves.
    queries = span + len(fed)
    real = cache_mask.cpu().bool()
    allowed = torch.zeros((count, queries, width + queries), dtype=torch.bool)
    real_suffix = torch.arange(span)[None, :] < lengths[:, None]
    causal = torch.tril(torch.ones((span, span), dtype=torch.bool))
    allowed[:, :span, :width] = real[:, None, :] & real_suffix[:, :, None]
    allowed[:, :span, width:width + span] = (causal[None] & real_suffix[:, None, :] & real_suffix[:, :, None]) | torch.diag_embed(~real_suffix)
    allowed[:, span:, :width] = real[:, None, :]
    allowed[:, span:, width:width + span] = real_suffix[:, None, :]
    if with_tree:
        allowed[:, span:, width + span:] = tree.ancestry()[None]
    mask = torch.zeros(allowed.shape, dtype=llm.dtype).masked_fill(~allowed, torch.finfo(llm.dtype).min)[:, None]
    device = llm.device
    return Layout(ids.to(device), mask.to(device), positions.to(device), lengths, span)


def read_tree(llm, hidden: torch.Tensor, layout: Layout, temperatures: torch.Tensor) -> torch.Tensor:
    """Outcome log-probabilities [rows, outcomes] from a tree pass's final hidden states."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    root = hidden[rows, (layout.lengths - 1).to(hidden.device)]
    branches = torch.cat([root[:, None], hidden[:, layout.span:]], dim=1)
    return llm.tree.outcome_logprobs(llm.head(branches, llm.tree.head_tokens), temperatures)


def slot_pass(llm, cache, cache_mask: torch.Tensor, next_positions: torch.Tensor, suffixes: list[list[int]], rows, temperatures: torch.Tensor) -> torch.Tensor:
    """The decision distribution after each row's cached prefix and suffix: [rows, outcomes]."""
    layout = tree_layout(llm, suffixes, cache_mask, next_positions)
    hidden, _ = llm.run(layout.ids, layout.mask, layout.positions, cache=cache, rows=rows)
    return read_tree(llm, hidden, layout, temperatures)


@dataclass
class Packed:
    """(prompt, belief, marker) rows laid out for one cache-free tree pass."""

    layout: Layout
    prompt_lengths: torch.Tensor   # [rows]
    beliefs: list[list[int]]


def packed_tokens(llm, prompt: list[int], belief: list[int], marker: list[int]) -> int:
    """Tokens one (prompt, belief, marker) row feeds in a `pack`ed pass: the row itself and the
    decision tree's fed nodes."""
    return len(prompt) + len(belief) + len(marker) + len(llm.tree.fed_nodes)


def pack(llm, prompts: list[list[int]], beliefs: list[list[int]], markers: list[list[int]]) -> Packed:
    suffixes = [prompt + belief + marker for prompt, belief, marker in zip(prompts, beliefs, markers)]
    empty = torch.zeros((len(suffixes), 0), dtype=torch.long)
    layout = tree_layout(llm, suffixes, empty, torch.zeros(len(suffixes), dtype=torch.long))
    return Packed(layout, torch.tensor([len(prompt) for prompt in prompts]), beliefs)


@dataclass
class Scored:
    """A teacher-forced batch: the decision distribution after each belief, and its belief's tokens."""

    outcome_logprobs: torch.Tensor      # [rows, outcomes]
    belief_logprobs: torch.Tensor       # [rows, belief width] log π(belief token) under the slot; 0 on padding
    belief_mask: torch.Tensor           # [rows, belief width] bool, a real belief token
    belief_logits: torch.Tensor | None = None  # [rows, belief width, vocab] the decoding's log-probabilities (keep_distributions)


def read(llm, hidden: torch.Tensor, packed: Packed, temperatures: torch.Tensor, *, beliefs_needed: bool = True, keep_distributions: bool = False) -> Scored:
    """Decision and belief log-probabilities from the final hidden states of a packed pass.
    `temperatures` [rows] are the decoding's (beliefs need them > 0)."""
    device = hidden.device
    outcome_logprobs = read_tree(llm, hidden, packed.layout, temperatures)
    width = max(len(belief) for belief in packed.beliefs)
    belief_mask = torch.zeros((len(packed.beliefs), width), dtype=torch.bool)
    targets = torch.zeros((len(packed.beliefs), width), dtype=torch.long)
    for row, belief in enumerate(packed.beliefs):
        belief_mask[row, : len(belief)] = True
        targets[row, : len(belief)] = torch.tensor(belief)
    belief_mask, targets = belief_mask.to(device), targets.to(device)
    if not beliefs_needed:
        return Scored(outcome_logprobs, torch.zeros(belief_mask.shape, device=device), belief_mask)
    # Belief token j sits at prompt length + j and is predicted by the position before it.
    predictors = (packed.prompt_lengths[:, None] - 1 + torch.arange(width)[None, :]).clamp(max=packed.layout.span - 1).to(device)
    logits = llm.head(hidden.gather(1, predictors[:, :, None].expand(-1, -1, hidden.shape[-1])))
    bans = llm.belief_bans
    young = (torch.arange(width, device=device) < MIN_BELIEF_TOKENS)[None, :, None]
    banned = torch.where(young, bans[0], bans[1])
    scale = temperatures.to(device).float().clamp_min(1e-6).view(-1, 1, 1)
    distributions = torch.log_softmax(logits.masked_fill(banned, BANNED_LOGIT) / scale, dim=-1)
    logprobs = distributions.gather(2, targets[:, :, None]).squeeze(2)
    return Scored(outcome_logprobs, logprobs.masked_fill(~belief_mask, 0.0), belief_mask, distributions if keep_distributions else None)


def score(llm, prompts: list[list[int]], beliefs: list[list[int]], markers: list[list[int]], rows, temperatures: torch.Tensor, *,
          beliefs_needed: bool = True, keep_distributions: bool = False) -> Scored:
    """Teacher-forced scoring of (prompt, belief) rows through the whole model; rows: each row's
    agent (None = the base model). Gradients flow if they are enabled."""
    packed = pack(llm, prompts, beliefs, markers)
    hidden, _ = llm.run(packed.layout.ids, packed.layout.mask, packed.layout.positions, rows=rows)
    return read(llm, hidden, packed, temperatures, beliefs_needed=beliefs_needed, keep_distributions=keep_distributions)


class Trunk:
    """The frozen lower layers' output for packed rows, computed once and reused every epoch.

    With LoRA on the top layers only (`split` = the first adapted layer), the hidden state that
    enters layer `split` does not depend on any adapter, so a phase computes it once per row; each
    training step then runs only the adapted layers, forward and backward.
    """

    def __init__(self, llm, split: int):
        self.llm, self.split = llm, split
        self.states: dict[int, torch.Tensor] = {}   # row id -> [suffix length + tree, hidden]

    @torch.no_grad()
    def add(self, keys: list[int], packed: Packed) -> None:
        layout = packed.layout
        hidden = self.llm.run_layers(self.llm.embed(layout.ids), layout.mask, layout.positions, 0, self.split)
        for row, key in enumerate(keys):
            length = int(layout.lengths[row])
            self.states[key] = torch.cat([hidden[row, :length], hidden[row, layout.span:]]).clone()

    def run(self, keys: list[int], packed: Packed, rows) -> torch.Tensor:
        """Final hidden states of the packed rows, from their stored trunk through the top layers."""
        layout = packed.layout
        fed = layout.ids.shape[1] - layout.span
        hidden = torch.zeros((len(keys), layout.ids.shape[1], self.llm.hidden_size), dtype=self.llm.dtype, device=self.llm.device)
        for row, key in enumerate(keys):
            length = int(layout.lengths[row])
            state = self.states[key]
            hidden[row, :length] = state[:length]
            hidden[row, layout.span:] = state[length:length + fed]
        top = self.llm.run_layers(hidden, layout.mask, layout.positions, self.split, self.llm.layer_count, rows=rows)
        return self.llm.norm(top)
