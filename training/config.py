"""`[training]`: the settings of the hindsight trainer (training/phase.py), each with its help text."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.schema import KeyedValueError, Section

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class APOConfig(Section):
    """`[training.apo]`: automated prompt optimisation of each agent's strategy prompt (training/apo.py)."""

    candidates: int = Field(3, ge=1, le=32, description="Rewrites the optimizer proposes per beam prompt per phase.")
    beam: int = Field(2, ge=1, le=16, description="Prompts kept per agent between phases (the best by replay score); each is rewritten.")
    holdout: float = Field(0.5, gt=0.0, lt=1.0, description="Share of the replayed states held back from the critique; a candidate is adopted only if it beats the current prompt there.")
    examples: int = Field(6, ge=2, le=64, description="Recent steps the critique reads, the best- and worst-paid among them included.")
    critique_tokens: int = Field(64, ge=8, le=1024, description="Most tokens of a critique.")
    prompt_tokens: int = Field(48, ge=8, le=512, description="Most tokens of a proposed strategy prompt.")
    max_chars: int = Field(300, ge=20, le=4000, description="Longest strategy prompt accepted, in characters.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature of the optimizer's critiques and rewrites.")
    optimizer: str = Field("self", description="'self' = the agents' own model; or a model path (as model.path) for a local optimizer.")
    optimizer_base_url: str | None = Field(None, pattern=r"^https?://", description="An OpenAI-compatible server for the optimizer (with optimizer_model).")
    optimizer_model: str | None = Field(None, description="The optimizer's model name on optimizer_base_url.")
    optimizer_api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The environment variable holding the optimizer server's key.")

    @model_validator(mode="after")
    def _remote_optimizer(self) -> APOConfig:
        if (self.optimizer_base_url is None) != (self.optimizer_model is None):
            raise KeyedValueError("training.apo.optimizer_model", "optimizer_base_url and optimizer_model go together", "set both, or neither")
        return self


class TrainingConfig(Section):
    enabled: bool = Field(True, description="Run training phases (needs a trainable in-process model).")
    method: Literal["lora", "apo"] = Field("lora", description="'lora' trains each agent's adapter (needs an in-process model); 'apo' rewrites each agent's strategy prompt, weights frozen (any backend).")
    every: int = Field(20, ge=1, description="Steps between training phases.")
    max_samples: int = Field(200, ge=0, le=100_000, description="Most recent decisions per agent a phase learns from, across phases (0 = all so far). Each one's pay is known for every decision, so older ones stay valid for the decision update, and more of them make the held-back test (significance) sharper; a phase costs time in proportion.")
    beliefs_per_state: int = Field(1, ge=1, le=16, description="Beliefs per past state: the one the agent wrote plus beliefs_per_state - 1 fresh ones. Above 1 each belief is credited with its exact value against the others (belief credit); 1 = the decision update alone.")
    trust: float = Field(0.1, ge=0.0, le=100.0, description="Weight of KL(pi || pi_old) on the decision distribution, pi_old the policy before the phase: the phase's trust region. Larger = a more cautious phase.")
    belief_coef: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the belief-credit loss against the decision loss (beliefs_per_state > 1).")
    kl_coef: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the KL leash from the belief tokens to the base model (k3 estimate per token).")
    clip_epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="PPO-style clip of the belief tokens' probability ratio (acts from the second epoch on).")
    holdout: float = Field(0.25, ge=0.0, lt=1.0, description="Share of a phase's states held back, the latest ones (by step): after each epoch an agent's expected pay on them decides whether it trains on (an epoch counts if its pay beats the best so far), and its best epoch must pass `significance` on them to be kept. 0 = no early stopping and no test.")
    significance: float = Field(1.5, ge=0.0, le=10.0, description="Standard errors by which the best epoch's held-back pay must beat the base model's (a paired t over the held-back states) for the phase's update to be kept; the best epoch has beaten the starting adapter's by then. Below it the agent keeps the adapter it started with, as it does with a single held-back state (no standard error). 0 = any gain.")
    epochs: int = Field(3, ge=1, le=100, description="Most passes over a phase's states (early stopping may end an agent sooner).")
    micro_batch: int = Field(16, ge=1, le=1024, description="States per agent per optimizer step (with all their beliefs); their returns are measured against their own mean.")
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0, description="AdamW learning rate, one optimizer per agent.")
    grad_clip: float = Field(1.0, gt=0.0, description="Max gradient norm of one agent's adapter per optimizer step.")
    lora_rank: int = Field(8, ge=1, le=256, description="Rank r of every agent's LoRA adapter.")
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA scaling numerator: the update is (alpha / r) * B A.")
    target_modules: list[str] = Field(default_factory=lambda: list(PROJECTIONS), min_length=1, description="Linear layers that get LoRA: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.")
    lora_layers: int | None = Field(8, ge=1, le=1024, description="LoRA on only the top lora_layers decoder layers: the frozen layers below run once per phase and the backward pass stops at the adapters. None = every layer.")
    apo: APOConfig = Field(default_factory=APOConfig, description="Prompt optimisation (method = 'apo').")

    @property
    def trains_lora(self) -> bool:
        """Whether phases train each agent's LoRA adapter (on an in-process model)."""
        return self.enabled and self.method == "lora"

    @model_validator(mode="after")
    def _known_modules(self) -> TrainingConfig:
        unknown = [name for name in self.target_modules if name not in PROJECTIONS]
        if unknown:
            raise KeyedValueError("training.target_modules", f"unknown module {unknown[0]!r}", f"use any of {', '.join(PROJECTIONS)}")
        return self


# Keys of earlier versions, with what replaces them; `simulation/config.py` turns each into one line.
REMOVED_KEYS = {
    "algorithm": "the trainer has one algorithm now (docs/training.md); delete the key",
    "expected_sign": "every decision is now trained on its exact distribution; delete the key",
    "decision_samples": "the decision is now trained on its exact distribution; delete the key",
    "decision_weight": "the decision and the belief have separate losses now; delete the key (see training.belief_coef)",
    "kl_clamp": "delete the key; training.kl_coef sets the belief leash",
    "carry_optimizer": "each phase starts a fresh optimizer; delete the key",
    "excess_return": "hindsight pay is always measured on standardised excess returns; delete the key",
    "reward_scale": "hindsight pay is standardised; delete the key (training.trust bounds a phase's step)",
    "group_size": "renamed: use training.beliefs_per_state",
    "lora_dropout": "delete the key",
    "reward": "moved: set market.reward",
    "risk_aversion": "moved: set market.risk_aversion",
}
