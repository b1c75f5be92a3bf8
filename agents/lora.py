"""Every agent's LoRA adapter in one stacked layer, so a batch of many agents costs one pass.

PEFT's mixed-adapter batch loops over the distinct adapters in every adapted layer, so its cost
grows with the number of agents in a batch. Here each adapted linear layer holds all agents'
matrices stacked, `A` as [agents, r, in] and `B` as [agents, out, r], and every row of a batch
names its agent (`AdapterRouter.rows`, -1 = no adapter). The LoRA term of a layer is then one
gather and two batched matmuls whatever the number of agents (the S-LoRA / Punica layout):

    y = W x + (alpha / r) * B[agent] A[agent] x      for rows with an adapter; y = W x otherwise.

Rows without an adapter (the base model, the KL reference, an untrained baseline) get a LoRA term
of exactly 0, and so, without gradients, do the rows of an agent whose adapter is still the
identity (every B zero: fresh, or reset). A batch with no other rows skips the term (it costs
nothing extra), and so does such a row in a decoding step on a CPU; in a mixed batch of many
tokens per row it rides along with B = 0, which costs less than gathering the other rows'
activations and copying their sums back (docs/experiments.md, 2026-12-05, fifth session).
Rows that are a contiguous run of agents in order (a simulation step's batch) read a slice of the
stack, so nothing is gathered or copied. When gradients are on, the gather is a one-hot matmul:
its backward is a matmul too, which sums the rows of one agent in a fixed order (the backward of
`index_select` is an `index_add` that is not reproducible on a CPU).

Adapters are kept in float32 whatever the model's dtype: the optimizer updates float32 masters,
and the LoRA term is computed in the activations' dtype (bf16 on CUDA and on CPUs with AMX, with
fp32 accumulation in the matmul). Without gradients a bf16 model reads a bf16 copy of the stacks,
cast once after each write to them rather than on every forward. A decoding step (one token per
row) on a CPU adds its LoRA term with a fused gather-GEMV kernel (`agents.lora_kernel`): it reads
each row's matrices straight from that copy (B transposed once, as [agents, r, out]), sums in
float32 and rounds into the output once. Where the kernel cannot be built, that step computes the
term from the float32 masters with two batched matmuls, rounding the sum into the bf16 output
once: there a bf16 batched matmul of one row per agent is about twice as slow as a float32 one
(the figures are in docs/benchmarks.md, "Agents at scale"). A fresh adapter is LoRA's usual
start, A uniform(+-1/sqrt(in)) and B = 0, so it leaves the model's outputs exactly as the base
model's; A is drawn from a generator seeded by the agent id, so a fresh adapter is the same in
every run.

The exchange format stays PEFT's: `save_agent` writes one agent as a standard PEFT folder
(`adapter_config.json` + `adapter_model.safetensors`), which `PeftModel.from_pretrained` and
vLLM load, and `load_agent` reads one back.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from agents.lora_kernel import DTYPES as KERNEL_DTYPES
from agents.lora_kernel import decoding_kernel

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
INIT_SEED = 20_240_601  # the A matrices of fresh adapters are drawn from INIT_SEED + agent id
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class LoraSpec:
    """The shape of every agent's adapter."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]      # e.g. ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None  # decoder layers that get LoRA; None = all

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class Routing:
    """One batch's rows as every LoRA layer reads them, worked out once per batch and device."""

    rows: torch.Tensor           # [batch] long on the layer's device, -1 = no adapter
    slots: torch.Tensor          # [batch] long on the device: the row's agent, 0 where it has none (its B is masked)
    active: torch.Tensor         # [batch, 1, 1] bool on the device: the row has an adapter
    all_active: bool             # every row has an adapter
    span: tuple[int, int] | None # rows are exactly agents start..stop-1 in order: a slice of the stack, no gather
    selection: torch.Tensor      # [batch, agents] float32 one-hot of each row's agent (a zero row where it has none)


class AdapterRouter:
    """Which agent's adapter each row of the current batch uses: shared by all LoRA layers.

    What the layers need of the rows (on the device, which rows are active, whether they are a
    contiguous run of agents) is worked out once per batch, not in each of the model's adapted
    layers: on a GPU that would be a host-device copy and a synchronisation per layer."""

    def __init__(self, agents: int, identity=None) -> None:
        self.agents = agents
        self.identity = identity                 # () -> [agents] bool: adapters that are exactly the identity
        self.rows: torch.Tensor | None = None   # [batch] long on the CPU, -1 = no adapter
        self._routing: dict[tuple[torch.device, bool], Routing | None] = {}

    @contextmanager
    def route(self, rows: list[int] | torch.Tensor | None):
        """Rows of every forward inside the block use these agents (None or all -1: the base model)."""
        saved = (self.rows, self._routing)
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.long).cpu()
            if bool((rows < 0).all()):
                rows = None
        self.rows, self._routing = rows, {}
        try:
            yield
        finally:
            self.rows, self._routing = saved

    def routing(self, device: torch.device, grad: bool) -> Routing | None:
        """The batch's rows as a layer on `device` reads them; without gradients (`grad` false) the
        rows of identity adapters are left out, and None = no row needs a LoRA term."""
        key = (device, grad)
        if key not in self._routing:
            rows = self.rows
            if not grad and self.identity is not None:
                rows = torch.where(self.identity()[rows.clamp(min=0)], -1, rows)
            active = rows >= 0
            if not bool(active.any()):
                self._routing[key] = None
                return None
            start = int(rows[0]) if len(rows) else -1
            contiguous = start >= 0 and bool((rows == torch.arange(start, start + len(rows))).all())
            slots = rows.clamp(min=0)
            selection = torch.nn.functional.one_hot(slots, self.agents).float() * active[:, None]
            self._routing[key] = Routing(rows.to(device), slots.to(device), active[:, None, None].to(device), bool(active.all()),
                                         (start, start + len(rows)) if contiguous else None, selection.to(device))
        return self._routing[key]


class MultiLoRALinear(torch.nn.Module):
    """A frozen linear layer plus one LoRA adapter per agent, chosen per row by the router."""

    def __init__(self, base: torch.nn.Linear, agents: int, spec: LoraSpec, router: AdapterRouter):
        super().__init__()
        self.base, self.router, self.scaling = base, router, spec.scaling
        device = base.weight.device
        self.lora_A = torch.nn.Parameter(torch.zeros((agents, spec.rank, base.in_features), device=device))
        self.lora_B = torch.nn.Parameter(torch.zeros((agents, base.out_features, spec.rank), device=device))
        self._cast: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (key, A, B) in the activations' dtype
        self._transposed: tuple[tuple, torch.Tensor] | None = None           # (key, B as [agents, r, out]) for the decoding kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.router.rows is None:
            return y
        grad = torch.is_grad_enabled()
        routing = self.router.routing(x.device, grad)
        if routing is None:
            return y
        if grad:
            selection = routing.selection
            a = (selection @ self.lora_A.flatten(1)).view(len(routing.rows), *self.lora_A.shape[1:])
            b = (selection @ self.lora_B.flatten(1)).view(len(routing.rows), *self.lora_B.shape[1:])
            return self._plus_delta(y, x, a.to(x.dtype), b.to(x.dtype))  # rows without an adapter got zero matrices
        if x.shape[-2] == 1 and x.device.type == "cpu":  # a decoding step on a CPU (see the docstring)
            kernel = decoding_kernel() if x.dtype in KERNEL_DTYPES and y.is_contiguous() else None
            if kernel is not None:
                kernel(y, x.contiguous(), *self.decoding_weights(x.dtype), routing.rows, self.scaling)
                return y
            stack_a, stack_b = self.lora_A, self.lora_B
        else:
            stack_a, stack_b = self.inference_weights(x.dtype)
        if routing.span is not None:
            start, stop = routing.span
            return self._plus_delta(y, x, stack_a[start:stop], stack_b[start:stop])
        if routing.all_active:
            return self._plus_delta(y, x, stack_a[routing.rows], stack_b[routing.rows])
        # Rows without an adapter get B = 0, so their term is exactly 0: cheaper than gathering the
        # active rows' activations and copying their sums back.
        return self._plus_delta(y, x, stack_a[routing.slots], stack_b[routing.slots] * routing.active)

    def inference_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked A and B in `dtype`, for passes without gradients: cast once and reused until
        either tensor is written (an optimizer step, a load or a reset advances its version
        counter), instead of once per call, per layer, per decoded token."""
        if self.lora_A.dtype == dtype:
            return self.lora_A, self.lora_B
        key = (dtype, self.lora_A._version, self.lora_B._version)
        if self._cast is None or self._cast[0] != key:
            self._cast = (key, self.lora_A.detach().to(dtype), self.lora_B.detach().to(dtype))
        return self._cast[1], self._cast[2]

    def decoding_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A [agents, r, in] and B as [agents, r, out] in `dtype`, the layout the decoding kernel
        reads: B's transposed copy is made once and reused until B is written."""
        stack_a, stack_b = self.inference_weights(dtype)
        key = (dtype, self.lora_B._version)
        if self._transposed is None or self._transposed[0] != key:
            self._transposed = (key, stack_b.detach().transpose(1, 2).contiguous())
        return stack_a.detach(), self._transposed[1]

    def _plus_delta(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """y + scaling * B A x per row, as one fused `baddbmm` onto y (no separate pass to scale
        the product or to add it): y [rows, tokens, out], x [rows, tokens, in], a [rows, r, in],
        b [rows, out, r]. The math is done in the LoRA matrices' dtype; where that is not the
        activations' (float32 masters on a bf16 model), y and x are cast up and the sum is rounded
        back once."""
        if a.dtype == x.dtype:
            return torch.baddbmm(y, x @ a.transpose(1, 2), b.transpose(1, 2), alpha=self.scaling)
        return torch.baddbmm(y.to(a.dtype), x.to(a.dtype) @ a.transpose(1, 2), b.transpose(1, 2), alpha=self.scaling).to(y.dtype)


class StackedAdapters:
    """All agents' adapters on one model: injection, reset, routing, and PEFT-format save/load."""

    def __init__(self, model: torch.nn.Module, agents: int, spec: LoraSpec):
        self.model, self.agents, self.spec = model, agents, spec
        self.router = AdapterRouter(agents, self.identity)
        self.layers: dict[str, MultiLoRALinear] = {}
        self._identity: tuple[tuple[int, ...], torch.Tensor] | None = None
        for param in model.parameters():
            param.requires_grad_(False)
        targets = [(name, module) for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in spec.target_modules and _in_layers(name, spec.layers)]
        if not targets:
            raise ValueError(f"no linear layer named {', '.join(spec.target_modules)} in the model")
        for name, module in targets:
            parent_name, _, child = name.rpartition(".")
            layer = MultiLoRALinear(module, agents, spec, self.router)
            setattr(model.get_submodule(parent_name), child, layer)
            self.layers[name] = layer
        for agent in range(agents):
            self.reset(agent)

    def route(self, rows):
        return self.router.route(rows)

    def identity(self) -> torch.Tensor:
        """[agents] bool on the CPU: the agents whose adapter is exactly the identity (every B is zero).

        Worked out again only when a B tensor has changed since: every in-place write to a
        tensor (the optimizer's step, `set_agent_state`, `load_agent`, `reset`, a `copy_` under
        `no_grad`) advances its version counter, which is the cache's key."""
        key = tuple(layer.lora_B._version for layer in self.layers.values())
        if self._identity is None or self._identity[0] != key:
            nonzero = None
            for layer in self.layers.values():
                rows = layer.lora_B.detach().flatten(1).ne(0).any(1)
                nonzero = rows if nonzero is None else nonzero | rows.to(nonzero.device)
            identity = ~nonzero.cpu() if nonzero is not None else torch.ones(self.agents, dtype=torch.bool)
            self._identity = (key, identity)
        return self._identity[1]

    def detach(self) -> None:
        """Put the model's own linear layers back (the adapters are dropped)."""
        for name, layer in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child, layer.base)
        self.layers = {}

    def parameters(self) -> list[torch.nn.Parameter]:
        """The stacked tensors, A then B of every layer: dimension 0 is the agent."""
        return [param for layer in self.layers.values() for param in (layer.lora_A, layer.lora_B)]

    def agent_state(self, agent: int) -> dict[str, torch.Tensor]:
        """One agent's adapter, keyed as PEFT saves it (lora_A [r, in], lora_B [out, r])."""
        state = {}
        for name, layer in self.layers.items():
            state[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[agent].detach().clone()
            state[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[agent].detach().clone()
        return state

    def set_agent_state(self, agent: int, state: dict[str, torch.Tensor]) -> None:
        expected = {f"base_model.model.{name}.lora_{part}.weight" for name in self.layers for part in ("A", "B")}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"adapter weights do not fit this model's adapters (missing {missing[:2]}, unexpected {unexpected[:2]})")
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.lora_A[agent].copy_(state[f"base_model.model.{name}.lora_A.weight"])
                layer.lora_B[agent].copy_(state[f"base_model.model.{name}.lora_B.weight"])

    def reset(self, agent: int) -> None:
        """The agent's fresh adapter: B = 0, A uniform(+-1/sqrt(in)) from a generator seeded by its id."""
        generator = torch.Generator().manual_seed(INIT_SEED + agent)
        with torch.no_grad():
            for layer in self.layers.values():
                weight_a = layer.lora_A[agent]
                bound = 1.0 / math.sqrt(weight_a.shape[1])
                weight_a.copy_(torch.empty(weight_a.shape).uniform_(-bound, bound, generator=generator))
                layer.lora_B[agent].zero_()

    def peft_config(self, base_model: str) -> dict:
        from peft import LoraConfig

        config = LoraConfig(r=self.spec.rank, lora_alpha=self.spec.alpha, target_modules=list(self.spec.target_modules),
                            layers_to_transform=list(self.spec.layers) if self.spec.layers is not None else None,
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model)
        return config.to_dict()

    def save_agent(self, agent: int, folder: Path, base_model: str = "") -> Path:
        """Write one agent's adapter as a PEFT folder; the folder appears whole or not at all."""
        folder = Path(folder)
        staging = folder.parent / f".{folder.name}.tmp{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        config = self.peft_config(base_model)
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=_jsonable))
        save_file({key: value.float().contiguous().cpu() for key, value in self.agent_state(agent).items()}, str(staging / ADAPTER_WEIGHTS))
        shutil.rmtree(folder, ignore_errors=True)
        staging.replace(folder)
        return folder

    def load_agent(self, agent: int, folder: Path) -> None:
        """Overwrite one agent's adapter with the PEFT folder's weights (they must fit this model)."""
        weights = Path(folder) / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"no saved adapter at {weights}")
        state = {key.replace(".default.", "."): value for key, value in load_file(str(weights)).items()}
        self.set_agent_state(agent, state)


def _in_layers(name: str, layers: tuple[int, ...] | None) -> bool:
    if layers is None:
        return True
    match = _LAYER_INDEX.search("." + name + ".")
    return match is not None and int(match.group(1)) in layers


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)
