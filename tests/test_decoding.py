import pytest

from agents.decoding import (
    COMPLETE_NUMBERS,
    NUMBER_PREFIXES,
    parse_decision,
    split_completion,
    split_tokens,
)


def test_every_accepted_spelling_is_a_number_in_range():
    for spelling in COMPLETE_NUMBERS:
        assert -10.0 <= float(spelling) <= 10.0
    assert "10.5" not in COMPLETE_NUMBERS and "11" not in COMPLETE_NUMBERS and "1.25" not in COMPLETE_NUMBERS
    assert {"-10", "+10", "+0", "-0.3", "+7.5", "+4"} <= COMPLETE_NUMBERS
    assert "+10." in NUMBER_PREFIXES and "-" in NUMBER_PREFIXES and "+" in NUMBER_PREFIXES and "+10.1" not in NUMBER_PREFIXES


def test_the_sign_is_required_so_a_short_is_as_reachable_as_a_long():
    assert all(spelling[0] in "+-" for spelling in COMPLETE_NUMBERS)
    assert not {"7.5", "10", "0"} & COMPLETE_NUMBERS
    assert {prefix[:1] for prefix in NUMBER_PREFIXES if prefix} == {"+", "-"}


@pytest.mark.parametrize("completion, value, reason", [
    ("Prices look firm.\nDecision: 7.5", 7.5, None),
    ("Bearish.\nDecision: -3", -3.0, None),
    ("", 0.0, "empty"),
    ("   \n ", 0.0, "empty"),
    ("I think it will rise a lot and", 0.0, "truncated"),
    ("Looks good.\nDecision: buy", 0.0, "non_numeric"),
    ("Huge upside.\nDecision: 42", 10.0, "out_of_range"),
    ("Crash.\nDecision: -15.5", -10.0, "out_of_range"),
])
def test_parse_decision_falls_back_with_a_reason(completion, value, reason):
    assert parse_decision(completion) == (value, reason)


def test_split_completion_separates_belief_and_decision():
    assert split_completion("Momentum is strong.\nDecision: 4") == ("Momentum is strong.", "4")
    assert split_completion("no marker at all") == ("no marker at all", "")


def test_every_generated_decision_is_valid_even_from_random_weights(tiny_llm):
    prompt = tiny_llm.chat_prompt("You are an investor.", "Momentum +0.5. Your belief?")
    completions = tiny_llm.generate([prompt] * 12, [1.5] * 12, belief_tokens=6, seed=3)
    for completion in completions:
        # the stored decision is what an independent parse of the written text reads
        assert parse_decision(completion.completion) == (completion.decision_depth, None)
        assert completion.completion.rsplit("Decision: ", 1)[1][:1] in ("+", "-")  # the sign is always written
        parts = split_tokens(tiny_llm.slot, 6, completion.completion_ids)
        assert not set(parts.belief_ids[:3]) & (tiny_llm.slot.newline_ids | set(tiny_llm.slot.stop_ids))  # no early newline, no stop
    assert len({completion.decision_depth for completion in completions}) > 3  # sampled, not one answer


def test_generation_is_reproducible_for_a_seed_and_differs_across_seeds(tiny_llm):
    prompt = tiny_llm.chat_prompt("You are an investor.", "Momentum +0.5. Your belief?")
    first = [c.completion for c in tiny_llm.generate([prompt] * 4, [1.0] * 4, belief_tokens=6, seed=5)]
    again = [c.completion for c in tiny_llm.generate([prompt] * 4, [1.0] * 4, belief_tokens=6, seed=5)]
    other = [c.completion for c in tiny_llm.generate([prompt] * 4, [1.0] * 4, belief_tokens=6, seed=6)]
    assert first == again
    assert first != other


def test_temperature_zero_rows_are_greedy_within_a_sampled_batch(tiny_llm):
    prompt = tiny_llm.chat_prompt("You are an investor.", "Momentum +0.5. Your belief?")
    a = tiny_llm.generate([prompt] * 3, [0.0, 1.5, 0.0], belief_tokens=6, seed=1)
    b = tiny_llm.generate([prompt] * 3, [0.0, 1.5, 0.0], belief_tokens=6, seed=2)
    assert a[0].completion == a[2].completion == b[0].completion == b[2].completion


def test_split_tokens_finds_where_the_belief_ends_and_the_number_begins(tiny_llm):
    prompt = tiny_llm.chat_prompt("You are an investor.", "Momentum +0.5. Your belief?")
    for answer in tiny_llm.generate([prompt] * 4, [1.5] * 4, belief_tokens=6, seed=8):
        parts = split_tokens(tiny_llm.slot, 6, answer.completion_ids)
        assert parts.belief_ids + parts.marker_ids + parts.number_ids == answer.completion_ids
        assert tiny_llm.tokenizer.decode(parts.marker_ids).strip() == "Decision:"
        assert float(tiny_llm.tokenizer.decode(parts.number_ids, skip_special_tokens=True)) == answer.decision_depth
        assert tiny_llm.tokenizer.decode(parts.belief_ids).strip() == answer.belief
