"""The one place where the compute device and dtype are chosen.

`auto` means CUDA with bfloat16 when a GPU is present (float16 on GPUs without bf16), Apple's MPS
with float32, and otherwise the CPU: with bfloat16 where the CPU has AMX tile units (Intel Sapphire
Rapids and later), float32 elsewhere. With AMX a bf16 GEMM is about 7x an fp32 one (2-core Sapphire
Rapids: 2,850-3,370 against 420-440 GFLOP/s), and a whole step or training phase of SmolLM2 about
2x; the learning benchmark learns the same in both (docs/benchmarks.md). Without AMX, bf16 on a
CPU is at best a little faster (a 2-core Zen 4 with AVX-512 BF16: 347 against 129 GFLOP/s on the
GEMM, not measured end to end) and at worst emulated and slower, so `auto` keeps fp32 there.
"""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device = 'cuda' but torch sees no CUDA device")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return torch.float32


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile units (and torch can use them)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent = no
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False
