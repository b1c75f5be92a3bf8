"""Per-agent adapters on one base model: fresh = base, isolated in mixed batches, saved in PEFT format."""

from __future__ import annotations

import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from agents.llm import LLM
from simulation.config import TrainingConfig
from training import adapters
from training.phase import Trainer
from training.rewards import reward
from training.samples import sample_from_completion

BELIEF_TOKENS = 6


def prompts(llm: LLM) -> list[str]:
    return [llm.chat_prompt("You are an investor.", f"Day {day}: what happens to the market?") for day in range(4)]


def greedy(llm: LLM, texts: list[str], adapter_names: list[str] | None) -> list[list[int]]:
    completions = llm.generate(texts, [0.0] * len(texts), adapter_names, belief_tokens=BELIEF_TOKENS, seed=0)
    return [completion.completion_ids for completion in completions]


def logits(model, llm: LLM, texts: list[str], adapter_names: list[str] | None = None) -> torch.Tensor:
    encoded = llm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    with torch.no_grad():
        return model(**encoded, **extra).logits


def trained_trainer(model_dir, adapter_dir, agent_ids=(0, 1, 2)) -> Trainer:
    """A trainer whose agent 0 went through one phase with a large learning rate."""
    llm = LLM.load(str(model_dir), device="cpu")
    trainer = Trainer(llm, TrainingConfig(learning_rate=5e-2, epochs=2, micro_batch=8, max_samples=0), adapter_dir, list(agent_ids),
                      belief_tokens=BELIEF_TOKENS, max_prompt_tokens=128, batch_size=16)
    trainer.attach()
    texts = prompts(llm) * 4
    completions = llm.generate(texts, [1.0] * len(texts), [trainer.adapter_name(0)] * len(texts), belief_tokens=BELIEF_TOKENS, seed=1)
    samples = [sample_from_completion(c, agent_id=0, step=i, realised_return=0.01, reward=reward("linear", 0.01, c.decision_depth),
                                      temperature=1.0, risk_preference=0.5, recent_variance=1e-4) for i, c in enumerate(completions)]
    trainer.run_phase(1, 15, {0: samples}, seed=3)
    return trainer


def test_fresh_adapters_leave_the_outputs_of_the_base_model(tiny_model_dir, tmp_path):
    llm = LLM.load(str(tiny_model_dir), device="cpu")
    texts = prompts(llm)
    base = greedy(llm, texts, None)
    base_logits = logits(llm.model, llm, texts)
    trainer = Trainer(llm, TrainingConfig(), tmp_path, [0, 1], belief_tokens=BELIEF_TOKENS, max_prompt_tokens=128, batch_size=16)
    trainer.attach()
    assert greedy(llm, texts, ["agent_0", "agent_1", "agent_0", "agent_1"]) == base
    assert torch.equal(logits(llm.model, llm, texts, ["agent_0", "agent_1", "agent_0", "agent_1"]), base_logits)


def test_attach_leaves_the_global_rng_alone_and_fresh_adapters_are_reproducible(tiny_model_dir, tmp_path):
    states = []
    for _ in range(2):
        llm = LLM.load(str(tiny_model_dir), device="cpu")
        rng = torch.get_rng_state()
        Trainer(llm, TrainingConfig(), tmp_path, [0, 1], belief_tokens=BELIEF_TOKENS, max_prompt_tokens=128, batch_size=16).attach()
        assert torch.equal(torch.get_rng_state(), rng)
        states.append(adapters.adapter_state(llm.model, "agent_1"))
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert any(key.endswith("lora_A.weight") and states[0][key].abs().sum() > 0 for key in states[0])


def test_one_agents_adapter_never_changes_another_agents_outputs(tiny_model_dir, tmp_path):
    trainer = trained_trainer(tiny_model_dir, tmp_path)
    llm = trainer.llm
    texts = prompts(llm)
    mixed = ["agent_0", "agent_1", "agent_0", "agent_2"]
    base_logits = logits(llm.model, llm, texts, ["__base__"] * 4)
    mixed_logits = logits(llm.model, llm, texts, mixed)
    assert torch.equal(mixed_logits[1], base_logits[1]) and torch.equal(mixed_logits[3], base_logits[3])
    assert not torch.allclose(mixed_logits[0], base_logits[0])
    # the same through generate, with the decision slot's logits processor, at temperature 0
    base = greedy(llm, texts, ["__base__"] * 4)
    outputs = greedy(llm, texts, mixed)
    assert outputs[1] == base[1] and outputs[3] == base[3]
    assert outputs[0] != base[0] or outputs[2] != base[2]


def test_saved_adapter_reloads_with_peft_and_reproduces_the_outputs(tiny_model_dir, tmp_path):
    trainer = trained_trainer(tiny_model_dir, tmp_path)
    llm = trainer.llm
    folder = tmp_path / "phase_1" / "agent_0"
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    texts = prompts(llm)
    expected_logits = logits(llm.model, llm, texts, ["agent_0"] * 4)
    expected = greedy(llm, texts, ["agent_0"] * 4)

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder).eval()
    assert torch.allclose(logits(reloaded, llm, texts), expected_logits, atol=1e-5)
    assert greedy(LLM.from_model(llm.tokenizer, reloaded), texts, None) == expected


def test_restored_adapters_reproduce_the_outputs_in_a_new_process_state(tiny_model_dir, tmp_path):
    trainer = trained_trainer(tiny_model_dir, tmp_path)
    texts = prompts(trainer.llm)
    expected = greedy(trainer.llm, texts, ["agent_0"] * 4)
    resumed = Trainer(LLM.load(str(tiny_model_dir), device="cpu"), trainer.config, tmp_path, [0, 1, 2],
                      belief_tokens=BELIEF_TOKENS, max_prompt_tokens=128, batch_size=16)
    resumed.attach()
    resumed.restore(1)
    assert greedy(resumed.llm, texts, ["agent_0"] * 4) == expected
