"""Adapter lifecycle: one LoRA adapter per agent on the one shared base model.

The base model is wrapped once in a `PeftModel` and every agent gets its own named adapter
(`agent_<id>`). A fresh adapter is LoRA's usual start, A random and B zero, so it leaves the
model's outputs exactly as the base model's until it is trained. A's random start is drawn from
a generator seeded by the agent id (the global RNG is left as it was), so a fresh adapter is
the same in every run and after every `reset`, which resume depends on.

Adapters are saved in standard PEFT format (`adapter_config.json` + `adapter_model.safetensors`),
one folder per agent and phase, so any of them reloads with
`PeftModel.from_pretrained(base_model, folder)`.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
INIT_SEED = 20_240_601  # the A matrices of fresh adapters are drawn from INIT_SEED + agent id


def adapter_name(agent_id: int) -> str:
    return f"agent_{agent_id}"


def lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none", task_type="CAUSAL_LM")


def attach_adapters(model, agent_ids: list[int], config: LoraConfig) -> PeftModel:
    """Wrap `model` in a PeftModel holding one fresh adapter per agent; base weights stay frozen."""
    with torch.random.fork_rng(devices=[]):  # PEFT's own init draws from the global CPU RNG
        peft_model = get_peft_model(model, config, adapter_name=adapter_name(agent_ids[0]))
        for agent_id in agent_ids[1:]:
            peft_model.add_adapter(adapter_name(agent_id), config)
    for agent_id in agent_ids:
        reset(peft_model, agent_id)
    peft_model.eval()
    return peft_model


def adapter_state(model: PeftModel, name: str) -> dict[str, torch.Tensor]:
    """A detached copy of one adapter's weights, keyed as PEFT saves them."""
    return {key: value.detach().clone() for key, value in get_peft_model_state_dict(model, adapter_name=name).items()}


def adapter_parameters(model: PeftModel, name: str) -> list[torch.nn.Parameter]:
    """The trainable tensors of one adapter (its lora_A and lora_B matrices)."""
    marker = f".{name}."
    return [param for key, param in model.named_parameters() if "lora_" in key and marker in key]


def load_state(model: PeftModel, name: str, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(model, state, adapter_name=name)
    unexpected = [key for key in result.unexpected_keys if "lora_" in key]
    if unexpected:
        raise ValueError(f"adapter weights do not fit adapter {name!r}: {unexpected[:3]}")


def reset(model: PeftModel, agent_id: int) -> None:
    """Give an agent its fresh adapter: B = 0, A uniform(+-1/sqrt(fan_in)) as nn.Linear draws it.

    A comes from a CPU generator seeded by the agent id, so the same agent always gets the same
    fresh adapter, on any device, without touching the global RNG.
    """
    name = adapter_name(agent_id)
    generator = torch.Generator().manual_seed(INIT_SEED + agent_id)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                weight_a = module.lora_A[name].weight
                bound = 1.0 / math.sqrt(weight_a.shape[1])
                weight_a.copy_(torch.empty(weight_a.shape).uniform_(-bound, bound, generator=generator))
                module.lora_B[name].weight.zero_()


def save_adapter(model: PeftModel, name: str, folder: Path) -> Path:
    """Write one adapter to `folder` in PEFT format; the folder appears whole or not at all."""
    folder = Path(folder)
    staging = folder.parent / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    # PEFT writes a non-default adapter to <directory>/<adapter name>/.
    model.save_pretrained(str(staging), selected_adapters=[name])
    written = staging / name
    shutil.rmtree(folder, ignore_errors=True)
    written.replace(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_adapter(model: PeftModel, name: str, folder: Path) -> None:
    """Overwrite adapter `name`'s weights with those saved in `folder`."""
    weights = Path(folder) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"no saved adapter at {weights}")
    device = next(iter(adapter_parameters(model, name))).device
    load_state(model, name, load_file(str(weights), device=str(device)))
