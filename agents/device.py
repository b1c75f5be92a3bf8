"""The one place where the compute device and dtype are chosen.

`auto` means CUDA with bfloat16 when a GPU is present (float16 on GPUs without bf16), Apple's MPS
with float32, and otherwise the CPU with float32. On a CPU without bf16 instructions bf16 matmuls
are slower than fp32; on one with them they can be faster (a 2-core Zen 4: 347 against 129 GFLOP/s
for a 2048² GEMM), but learning in bf16 has not been measured on a CPU, so it is chosen, not `auto`.
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
    return torch.float32
