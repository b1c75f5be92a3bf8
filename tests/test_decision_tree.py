"""The exact decision distribution: the slot's token tree, one pass over it, and sampling from it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from agents.decision_tree import DECISION_VALUES, DecisionTree
from agents.decoding import SlotVocabulary, split_tokens
from agents.scoring import score


def test_the_tree_spells_every_decision_and_nothing_else(tiny_llm):
    tree = tiny_llm.tree
    assert sorted(set(tree.outcome_values)) == list(DECISION_VALUES)
    for outcome, value in enumerate(tree.outcome_values):
        text = tiny_llm.tokenizer.decode(tree.path_tokens(outcome), skip_special_tokens=True)
        assert text[0] in "+-" and float(text) == value
        assert tree.path_tokens(outcome)[-1] == tiny_llm.slot.stop_ids[0]


def test_the_distribution_sums_to_one_and_its_mean_is_the_expected_decision(tiny_llm):
    tree = tiny_llm.tree
    logits = torch.randn(4, len(tree.branch_nodes), len(tree.head_tokens), generator=torch.Generator().manual_seed(0))
    logprobs = tree.outcome_logprobs(logits, torch.tensor([1.0, 0.5, 2.0, 0.0]))
    assert torch.allclose(logprobs.exp().sum(-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(tree.value_probs(logprobs).sum(-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(tree.value_logprobs(logprobs).exp(), tree.value_probs(logprobs), atol=1e-6)
    expected = (tree.value_probs(logprobs) * torch.tensor(DECISION_VALUES)).sum(-1)
    assert torch.allclose(tree.expected_value(logprobs), expected, atol=1e-4)
    assert logprobs[3].exp().max() > 0.999  # temperature 0: all mass on the greedy path


def _path_logprob(llm, prefix: list[int], outcome: int) -> float:
    """log P(outcome) by one full forward per branch on the way, no cache and no tree mask."""
    tree = llm.tree
    chain, node = [], tree.outcomes[outcome]
    while node > 0:
        chain.append(node)
        node = tree.nodes[node].parent
    chain = [0] + chain[::-1]
    total = 0.0
    for depth, node in enumerate(chain):
        if node not in tree.branch_of:
            break
        ids = torch.tensor([prefix + [tree.nodes[n].token for n in chain[1:depth + 1]]])
        with torch.no_grad():
            logits = llm.model(input_ids=ids).logits[0, -1].float()
        branch = tree.branch_of[node]
        options = [logits[tree.nodes[child].token] for child in tree.options[branch]]
        if tree.can_stop[branch]:
            options.append(torch.logsumexp(logits[list(tree.stop_ids)], 0))
        logprobs = torch.log_softmax(torch.stack(options), 0)
        total += float(logprobs[-1] if depth + 1 == len(chain) else logprobs[tree.options[branch].index(chain[depth + 1])])
    return total


def test_one_tree_pass_equals_a_forward_per_branch_along_each_path(tiny_llm):
    prompt = tiny_llm.chat_prompt("You are an investor.", "Momentum +0.5. Your belief?")
    completion = tiny_llm.generate([prompt], [1.0], belief_tokens=6, seed=3)[0]
    parts = split_tokens(tiny_llm.slot, 6, completion.completion_ids)
    scored = score(tiny_llm, [completion.prompt_ids], [parts.belief_ids], [parts.marker_ids], None, torch.ones(1), beliefs_needed=False)
    prefix = completion.prompt_ids + parts.belief_ids + parts.marker_ids
    for outcome in (0, 7, 50, 111, len(tiny_llm.tree.outcomes) - 1):
        assert float(scored.outcome_logprobs[0, outcome]) == pytest.approx(_path_logprob(tiny_llm, prefix, outcome), abs=1e-4)
    # and generation's own tree pass, on its decoding cache, gives the same distribution
    assert torch.allclose(scored.outcome_logprobs[0].exp(), torch.tensor(completion.outcome_logprobs).exp(), atol=1e-5)


@pytest.mark.parametrize("exact", [True, False])
def test_sampled_decisions_follow_the_exact_distribution(tiny_llm, exact):
    """A chi-square test of 3000 sampled decisions after one (greedy) belief against the exact
    distribution: sampled from the tree pass, or token by token down the tree."""
    prompt = tiny_llm.chat_prompt("You are an investor.", "Momentum +0.5. Your belief?")
    rows = 3000
    samples = tiny_llm.generate([prompt] * rows, [0.0] * rows, belief_tokens=5, seed=1, decision_temperatures=[1.5] * rows, exact=exact, batch_size=1000)
    reference = tiny_llm.generate([prompt], [0.0], belief_tokens=5, seed=2, decision_temperatures=[1.5])[0]
    assert {tuple(s.completion_ids[:5]) for s in samples} == {tuple(reference.completion_ids[:5])}  # one belief
    probabilities = Counter()
    for value, logprob in zip(tiny_llm.tree.outcome_values, reference.outcome_logprobs):
        probabilities[value] += float(np.exp(logprob))
    counts = Counter(sample.decision_depth for sample in samples)
    values = sorted(probabilities)
    observed = np.array([counts.get(value, 0) for value in values], dtype=float)
    expected = np.array([probabilities[value] * rows for value in values])
    common = expected >= 5
    observed = np.append(observed[common], observed[~common].sum())
    expected = np.append(expected[common], expected[~common].sum())
    assert chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 0.001
    assert np.mean([s.decision_depth for s in samples]) == pytest.approx(reference.expected_decision, abs=0.3)


def test_two_stop_tokens_are_one_choice_and_the_first_is_always_written(tokenizer):
    vocabulary = SlotVocabulary.from_tokenizer(tokenizer)
    other_stop = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    two = DecisionTree.from_vocabulary(SlotVocabulary(vocabulary.marker_ids, vocabulary.newline_marker_ids, (vocabulary.stop_ids[0], other_stop),
                                                      vocabulary.newline_ids, vocabulary.number_tokens))
    one = DecisionTree.from_vocabulary(vocabulary)
    logits = torch.randn(2, len(two.branch_nodes), len(two.head_tokens), generator=torch.Generator().manual_seed(1))
    stops = [two.head_tokens.index(token) for token in two.stop_ids]
    merged = logits.clone()
    merged[:, :, stops[0]] = logits[:, :, stops].logsumexp(-1)  # what one stop token would need to be worth
    keep = [index for index, token in enumerate(two.head_tokens) if token != other_stop]
    assert torch.allclose(two.outcome_logprobs(logits, torch.ones(2)), one.outcome_logprobs(merged[:, :, keep], torch.ones(2)), atol=1e-5)
    assert all(two.path_tokens(outcome)[-1] == vocabulary.stop_ids[0] for outcome in range(len(two.outcomes)))
