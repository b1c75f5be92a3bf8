"""A fused kernel for the stacked LoRA term of a decoding step on a CPU: gather and GEMV in one pass.

In a decoding step every row is one token, and its LoRA term is two matrix-vector products with
its own agent's matrices: h = A[agent] x (r values), then y += scaling * B[agent] h. torch has no
batched GEMV for this: `bmm` of one row per agent is slow on a CPU (a bf16 one about twice as
slow as a float32 one), and every step reads the adapters' stacks whole (the figures are in
docs/benchmarks.md, "Where the adapters' cost goes"). The kernel reads each row's A and B once,
straight from the stacks in the activations' dtype (no gather, no copy), sums in float32 and adds
the term into the layer's output in place, rounding it once to the output's dtype. Rows whose agent is -1 are left as they are. B is read as [agents, r,
out] (a transposed copy the layer keeps), so the second product is r scaled vector additions.

It is C++ built at first use with torch's `cpp_extension` (about 20 s, once per machine: the build
is cached under `$TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions) for this CPU's
vector extension. Where it cannot be built (no C++ compiler, no Python headers), or where
`LLM_MARKET_SIM_LORA_KERNEL=0`, `decoding_kernel()` returns None and the layer keeps the `bmm`
path; the run records which one it used (`run.backend`).
"""

from __future__ import annotations

import functools
import os
import subprocess
import warnings
from collections.abc import Callable

import torch

SWITCH = "LLM_MARKET_SIM_LORA_KERNEL"   # "0" = never build or use the kernel
DTYPES = (torch.float32, torch.bfloat16)  # the dtypes it takes: activations, A and B all in one of them
_AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"]
_FLAGS = {"AVX512": _AVX512, "AVX512_BF16": _AVX512, "AVX2": ["-mavx2", "-mfma"]}  # torch's CPU capability -> vector flags

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstring>
#include <type_traits>
#include <vector>

static inline float load(const float* p, int64_t i) { return p[i]; }
static inline float load(const uint16_t* p, int64_t i) {  // bfloat16 -> float32 is exact
  uint32_t bits = uint32_t(p[i]) << 16; float f; std::memcpy(&f, &bits, 4); return f;
}
static inline void store(float* p, int64_t i, float v) { p[i] = v; }
static inline void store(uint16_t* p, int64_t i, float v) {  // float32 -> bfloat16, round to nearest even, as torch
  uint32_t bits; std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) { p[i] = 0x7fc0; return; }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  p[i] = uint16_t(bits >> 16);
}

template <typename T>
static void add_lora(T* y, const T* x, const T* a, const T* bt, const int64_t* agents,
                     int64_t rows, int64_t in, int64_t out, int64_t rank, float scaling) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(in), acc(out), h(rank);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t agent = agents[i];
      if (agent < 0) continue;
      for (int64_t k = 0; k < in; ++k) xf[k] = load(x + i * in, k);
      const T* ai = a + agent * rank * in;
      for (int64_t j = 0; j < rank; ++j) {
        const T* row = ai + j * in;
        float sum = 0.f;
        #pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < in; ++k) sum += xf[k] * load(row, k);
        h[j] = sum * scaling;
      }
      T* yi = y + i * out;
      for (int64_t o = 0; o < out; ++o) acc[o] = load(yi, o);
      const T* bi = bt + agent * rank * out;
      for (int64_t j = 0; j < rank; ++j) {
        const T* row = bi + j * out;
        const float hj = h[j];
        #pragma omp simd
        for (int64_t o = 0; o < out; ++o) acc[o] += hj * load(row, o);
      }
      for (int64_t o = 0; o < out; ++o) store(yi, o, acc[o]);
    }
  });
}

// y [rows, out] += scaling * B[agent] A[agent] x [rows, in] per row; a [agents, rank, in] and
// bt [agents, rank, out] in x's dtype, summed in float32; agents [rows] int64, -1 = leave the row.
void add_lora_(torch::Tensor y, torch::Tensor x, torch::Tensor a, torch::Tensor bt, torch::Tensor agents, double scaling) {
  TORCH_CHECK(y.is_contiguous() && x.is_contiguous() && a.is_contiguous() && bt.is_contiguous() && agents.is_contiguous());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(y.scalar_type() == dtype && a.scalar_type() == dtype && bt.scalar_type() == dtype && agents.scalar_type() == at::kLong);
  const int64_t rows = agents.numel(), in = a.size(2), out = bt.size(2), rank = a.size(1);
  TORCH_CHECK(x.numel() == rows * in && y.numel() == rows * out && bt.size(1) == rank && bt.size(0) == a.size(0));
  const float s = float(scaling);
  if (dtype == at::kBFloat16)
    add_lora((uint16_t*)y.data_ptr(), (const uint16_t*)x.data_ptr(), (const uint16_t*)a.data_ptr(), (const uint16_t*)bt.data_ptr(),
             agents.data_ptr<int64_t>(), rows, in, out, rank, s);
  else {
    TORCH_CHECK(dtype == at::kFloat);
    add_lora(y.data_ptr<float>(), x.data_ptr<float>(), a.data_ptr<float>(), bt.data_ptr<float>(), agents.data_ptr<int64_t>(), rows, in, out, rank, s);
  }
}
"""


def decoding_kernel() -> Callable | None:
    """`add_lora_(y, x, a, bt, agents, scaling)`: y [rows, .., out] += scaling * bt[agent].T a[agent] x
    per row, in place; every tensor contiguous and in one dtype, agents int64. Built once per
    process (and cached on disk), or None where it is switched off (read at every call, so a
    benchmark can time both paths in one process) or cannot be built (the reason is warned once)."""
    return None if os.environ.get(SWITCH, "1") == "0" else _build()


@functools.cache
def _build() -> Callable | None:
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        from torch.utils.cpp_extension import load_inline

        _put_ninja_on_path()
        module = load_inline(f"llm_market_sim_lora_v2_{capability.lower()}", cpp_sources=_SOURCE, functions=["add_lora_"],
                             extra_cflags=["-O3", "-fopenmp", *_FLAGS.get(capability, [])], extra_ldflags=["-fopenmp"])
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as error:  # no compiler, headers or ninja: bmm is as right, only slower
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"the CPU kernel for LoRA decoding steps could not be built ({reason}); torch's bmm is used instead", RuntimeWarning, stacklevel=2)
        return None
    return module.add_lora_


def _put_ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the `ninja` package (a dependency) is in the virtual
    environment's bin folder, which is not on PATH when its python is run without activating it."""
    try:
        import ninja
    except ImportError:
        return  # a ninja on PATH, or the build's error says that none was found
    folders = os.environ.get("PATH", "").split(os.pathsep)
    if ninja.BIN_DIR not in folders:
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, *folders])


def decoding_path(device: torch.device) -> str:
    """What computes the LoRA term of a decoding step on `device`: "kernel" or "bmm"."""
    return "kernel" if device.type == "cpu" and decoding_kernel() is not None else "bmm"
