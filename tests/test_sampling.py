"""Sampling is on-policy: what `generate` draws is exactly the distribution that training scores."""

from __future__ import annotations

import json
import shutil

import torch

from agents.decoding import split_tokens
from agents.llm import LLM
from agents.scoring import score

BELIEF_TOKENS = 8


def test_a_model_folders_generation_config_does_not_change_sampling(tiny_model_dir, tmp_path):
    """Qwen2.5-Instruct's generation_config.json sets a repetition penalty (and top-k, top-p);
    the engine's own sampler ignores them, so the log-probability of every token it wrote is the
    one the trainer computes."""
    folder = tmp_path / "with-generation-config"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.3, "top_k": 5, "top_p": 0.5, "temperature": 0.3, "do_sample": True}))
    configured, plain = LLM.load(str(folder), device="cpu", dtype="float32"), LLM.load(str(tiny_model_dir), device="cpu", dtype="float32")
    prompt = plain.chat_prompt("You are an investor.", "Momentum +0.5 momentum +0.5 momentum. Your belief?")
    first = configured.generate([prompt] * 6, [1.2] * 6, belief_tokens=BELIEF_TOKENS, seed=4)
    second = plain.generate([prompt] * 6, [1.2] * 6, belief_tokens=BELIEF_TOKENS, seed=4)
    assert [c.completion_ids for c in first] == [c.completion_ids for c in second]
    parts = [split_tokens(plain.slot, BELIEF_TOKENS, c.completion_ids) for c in first]
    scored = score(configured, [c.prompt_ids for c in first], [p.belief_ids for p in parts], [p.marker_ids for p in parts], None, torch.full((6,), 1.2))
    for row, completion in enumerate(first):
        # the belief's tokens: the sampler's log-probabilities, recomputed by a plain softmax at temperature 1.2
        with torch.no_grad():
            logits = configured.model(input_ids=torch.tensor([completion.prompt_ids + parts[row].belief_ids])).logits[0].float()
        bans = configured.belief_bans
        manual = []
        for position, token in enumerate(parts[row].belief_ids):
            step = logits[len(completion.prompt_ids) + position - 1].masked_fill(bans[0 if position < 3 else 1], -1e9) / 1.2
            manual.append(float(torch.log_softmax(step, -1)[token]))
        assert torch.allclose(scored.belief_logprobs[row, : len(manual)], torch.tensor(manual), atol=1e-4)
        assert torch.allclose(scored.outcome_logprobs[row].exp(), torch.tensor(completion.outcome_logprobs).exp(), atol=1e-5)


def test_the_sampler_leaves_no_token_to_the_model_folders_defaults(tiny_model_dir):
    llm = LLM.load(str(tiny_model_dir), device="cpu", dtype="float32")
    prompt = llm.chat_prompt("You are an investor.", "Your belief?")
    answers = llm.generate([prompt] * 4, [1.0, 1.0, 0.0, 0.0], belief_tokens=BELIEF_TOKENS, seed=9)
    assert answers[2].completion_ids == answers[3].completion_ids  # greedy rows agree
    for answer in answers:
        parts = split_tokens(llm.slot, BELIEF_TOKENS, answer.completion_ids)
        assert not set(parts.belief_ids[:3]) & llm.slot.newline_ids  # no newline among the first belief tokens
        assert not set(parts.belief_ids) & set(llm.slot.stop_ids)
        assert parts.belief_ids[-1] in llm.slot.newline_ids or len(parts.belief_ids) == BELIEF_TOKENS  # ends at a newline or the budget
