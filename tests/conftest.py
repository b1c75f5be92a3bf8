"""Shared fixtures: a tiny random-weight Llama saved as a real model folder (helpers the tests import are in helpers.py).

The tiny model uses SmolLM2's real tokenizer (read from the packaged GGUF file), so prompts,
chat template and the decision slot are exercised exactly as in a real run, at a fraction of the
cost. It is saved with `save_pretrained`, so scenarios load it through the same folder-loading
code a user's Qwen2.5-1.5B takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import packaged_tokenizer


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

    return LLM.load(str(tiny_model_dir), device="cpu", dtype="float32")
