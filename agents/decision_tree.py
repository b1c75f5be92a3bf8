"""The decision slot's token tree, and the exact distribution over every decision it can write.

After `Decision: ` the slot admits only tokens that spell a signed number in [-10, 10] with at
most one decimal (`agents/decoding.py`). Those spellings form a small tree of token paths: for
SmolLM2's tokenizer, which writes numbers one character at a time, 47 of its nodes have more
than one way on (the root, two signs, 22 whole parts, 22 decimal points), and 224 paths end in
a complete number. Feeding the 46 non-root nodes to the model once, each attending to the
prompt, the belief and its own ancestors (`attention_mask`), gives the logits at every branch
point; the product of the slot's choices along a path is the exact probability of that
spelling, and the sum over spellings of one value (`+5` and `+5.0`, `+0` and `-0`) the
probability of that decision. So one teacher-forced pass yields π(d | prompt, belief) for all
201 decisions, its expectation, and a sample from it; the engine samples decisions from exactly
this distribution, and training and AED read it.

Ending the number is one choice however many end-of-sequence tokens a tokenizer has (Qwen2.5
has two): its probability is the sum over them (`logsumexp`), and the sampled path always ends
with the first one, so which stop token was written is never something the model can learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from agents.decoding import COMPLETE_NUMBERS, NUMBER_PREFIXES, SlotVocabulary

DECISION_VALUES = tuple(round(-10.0 + 0.1 * index, 1) for index in range(201))  # the 201 decisions, -10.0 ... +10.0
GREEDY_TEMPERATURE = 1e-6  # temperature 0 is greedy: every branch's best option gets probability 1


@dataclass(frozen=True)
class TreeNode:
    token: int | None        # the token that leads here (None at the root)
    parent: int              # node index (-1 at the root)
    depth: int               # tokens after the marker
    text: str                # the number written so far


@dataclass(frozen=True)
class DecisionTree:
    """Every token path the slot allows after the marker; built once per tokenizer."""

    nodes: tuple[TreeNode, ...]          # breadth first; node 0 is the root (nothing written yet)
    branch_nodes: tuple[int, ...]        # nodes with a choice to make; branch_nodes[0] is the root
    options: tuple[tuple[int, ...], ...] # per branch node: the child nodes it may go on to
    can_stop: tuple[bool, ...]           # per branch node: whether ending the number is an option
    outcomes: tuple[int, ...]            # nodes where a number may end (complete spellings)
    outcome_values: tuple[float, ...]    # the decision each outcome writes
    stop_ids: tuple[int, ...]

    @classmethod
    def from_vocabulary(cls, vocabulary: SlotVocabulary) -> DecisionTree:
        nodes = [TreeNode(None, -1, 0, "")]
        children: dict[int, list[int]] = {0: []}
        frontier = [0]
        while frontier:
            following = []
            for index in frontier:
                text = nodes[index].text
                for token, piece in sorted(vocabulary.number_tokens.items()):
                    if text + piece in NUMBER_PREFIXES and piece:
                        nodes.append(TreeNode(token, index, nodes[index].depth + 1, text + piece))
                        children[index].append(len(nodes) - 1)
                        children[len(nodes) - 1] = []
                        following.append(len(nodes) - 1)
            frontier = following
        complete = [index for index, node in enumerate(nodes) if node.text in COMPLETE_NUMBERS]
        branches = [index for index in range(len(nodes)) if children[index]]
        return cls(
            nodes=tuple(nodes),
            branch_nodes=tuple(branches),
            options=tuple(tuple(children[index]) for index in branches),
            can_stop=tuple(nodes[index].text in COMPLETE_NUMBERS for index in branches),
            outcomes=tuple(complete),
            outcome_values=tuple(float(nodes[index].text) + 0.0 for index in complete),
            stop_ids=vocabulary.stop_ids,
        )

    # --- what the model is fed ---------------------------------------------------------------

    @cached_property
    def fed_nodes(self) -> tuple[int, ...]:
        """Branch nodes other than the root, in order: the tokens a tree pass feeds (the root's
        logits come from the last marker token)."""
        return self.branch_nodes[1:]

    def feed_tokens(self) -> list[int]:
        return [self.nodes[index].token for index in self.fed_nodes]

    def feed_depths(self) -> list[int]:
        return [self.nodes[index].depth for index in self.fed_nodes]

    def ancestry(self) -> torch.Tensor:
        """[fed, fed] bool: fed node i may attend fed node j (j is i or one of its ancestors)."""
        position = {node: slot for slot, node in enumerate(self.fed_nodes)}
        mask = torch.zeros((len(self.fed_nodes), len(self.fed_nodes)), dtype=torch.bool)
        for slot, node in enumerate(self.fed_nodes):
            while node > 0:
                mask[slot, position[node]] = True
                node = self.nodes[node].parent
        return mask

    # --- from logits to the distribution -----------------------------------------------------

    @cached_property
    def head_tokens(self) -> tuple[int, ...]:
        """The only tokens whose logits the tree needs: every number token on a path, and the stops."""
        return tuple(sorted({node.token for node in self.nodes[1:]} | set(self.stop_ids)))

    @cached_property
    def _tables(self) -> dict[str, torch.Tensor]:
        """Index tables that turn branch logits into outcome log-probabilities in a few tensor ops."""
        column = {token: index for index, token in enumerate(self.head_tokens)}
        width = max(len(options) + can_stop for options, can_stop in zip(self.options, self.can_stop))
        option_columns = torch.zeros((len(self.branch_nodes), width), dtype=torch.long)
        option_valid = torch.zeros((len(self.branch_nodes), width), dtype=torch.bool)
        is_stop = torch.zeros((len(self.branch_nodes), width), dtype=torch.bool)
        edge_of_node = torch.full((len(self.nodes),), -1, dtype=torch.long)  # flat (branch, option) of the edge into a node
        stop_edge = torch.full((len(self.nodes),), -1, dtype=torch.long)     # flat (branch, option) of ending at a node
        for branch, (node, options, can_stop) in enumerate(zip(self.branch_nodes, self.options, self.can_stop)):
            for option, child in enumerate(options):
                option_columns[branch, option], option_valid[branch, option] = column[self.nodes[child].token], True
                edge_of_node[child] = branch * width + option
            if can_stop:
                option = len(options)
                option_valid[branch, option], is_stop[branch, option] = True, True
                stop_edge[node] = branch * width + option
        # A path's log-probability is the sum of the edges into its nodes, then its stop.
        paths = torch.zeros((len(self.outcomes), len(self.branch_nodes) * width))
        for row, node in enumerate(self.outcomes):
            if stop_edge[node] >= 0:
                paths[row, stop_edge[node]] = 1.0  # a leaf (no branch) ends with probability 1
            while node > 0:
                paths[row, edge_of_node[node]] = 1.0
                node = self.nodes[node].parent
        values = torch.tensor(self.outcome_values)
        to_value = (values[:, None] - torch.tensor(DECISION_VALUES)[None, :]).abs() < 1e-6  # [outcomes, 201]
        return {"option_columns": option_columns, "option_valid": option_valid, "is_stop": is_stop,
                "stop_columns": torch.tensor([column[token] for token in self.stop_ids]),
                "paths": paths, "to_value": to_value.float(), "values": values}

    def option_logprobs(self, branch_logits: torch.Tensor, branches: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
        """log-probability of each option at given branch nodes: [rows, k, options] (-inf where a
        branch has fewer options). `branch_logits` [rows, k, len(head_tokens)] are the raw logits
        at those nodes, `branches` [k] or [rows, k] their indices in `branch_nodes`."""
        tables = {key: value.to(branch_logits.device) for key, value in self._tables.items()}
        logits = branch_logits.float()
        branches = branches.to(logits.device).expand(logits.shape[0], -1) if branches.dim() == 1 else branches.to(logits.device)
        columns, valid, is_stop = tables["option_columns"][branches], tables["option_valid"][branches], tables["is_stop"][branches]
        option_logits = logits.gather(2, columns)
        stop_logits = logits[:, :, tables["stop_columns"]].logsumexp(-1, keepdim=True)  # any stop token ends it
        option_logits = torch.where(is_stop, stop_logits, option_logits)
        scale = temperatures.float().to(logits.device).clamp_min(GREEDY_TEMPERATURE).view(-1, 1, 1)
        return torch.log_softmax((option_logits / scale).masked_fill(~valid, -math.inf), dim=-1)

    def outcome_logprobs(self, branch_logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
        """log-probability of every outcome (a complete spelling): [rows, outcomes].

        `branch_logits` are the raw logits of `head_tokens` at every branch node, [rows, branches,
        len(head_tokens)] (root first, then `fed_nodes`); `temperatures` [rows], 0 meaning greedy.
        """
        every = torch.arange(len(self.branch_nodes))
        edge_logprobs = self.option_logprobs(branch_logits, every, temperatures).masked_fill(~self._tables["option_valid"].to(branch_logits.device), 0.0)
        return edge_logprobs.flatten(1) @ self._tables["paths"].to(branch_logits.device).T

    @cached_property
    def branch_of(self) -> dict[int, int]:
        """Node index -> its index in `branch_nodes` (nodes with a choice to make)."""
        return {node: branch for branch, node in enumerate(self.branch_nodes)}

    def follow(self, branch: int, option: int) -> int | None:
        """The child node an option leads to, or None where the option ends the number."""
        options = self.options[branch]
        return options[option] if option < len(options) else None

    def value_probs(self, outcome_logprobs: torch.Tensor) -> torch.Tensor:
        """P(decision = v) for the 201 values of `DECISION_VALUES`: [rows, 201]."""
        return outcome_logprobs.exp() @ self._tables["to_value"].to(outcome_logprobs.device)

    def value_logprobs(self, outcome_logprobs: torch.Tensor) -> torch.Tensor:
        """log P(decision = v) for the 201 values: [rows, 201] (a log-sum over each value's spellings)."""
        log_map = torch.log(self._tables["to_value"].to(outcome_logprobs.device))  # 0 where a spelling writes v, -inf elsewhere
        return torch.logsumexp(outcome_logprobs[:, :, None] + log_map[None], dim=1)

    def expected_value(self, outcome_logprobs: torch.Tensor) -> torch.Tensor:
        return outcome_logprobs.exp() @ self._tables["values"].to(outcome_logprobs.device)

    def path_tokens(self, outcome: int) -> list[int]:
        """The tokens of an outcome's spelling, then the (first) stop token."""
        node, tokens = self.outcomes[outcome], []
        while node > 0:
            tokens.append(self.nodes[node].token)
            node = self.nodes[node].parent
        return tokens[::-1] + [self.stop_ids[0]]
