"""A training phase: every agent's adapter learns from that agent's own decisions, then is saved.

The simulation owns one `Trainer`. `attach` gives every agent a fresh adapter on the shared base
model (agents/lora.py); from then on every row of every batch runs with its agent's adapter.
Every `training.every` steps the simulation calls `run_phase` with each agent's samples. The phase:

1. keeps each agent's `max_samples` most recent samples (across phases: a past day's pay is known
   for every decision, so an old sample stays valid for the decision update);
2. with `beliefs_per_state` G > 1, writes G - 1 fresh beliefs for every sample's prompt, for all
   agents in one batched `generate`, each row with its own adapter;
3. scores every (state, belief) under the adapters as they are, and holds back `holdout` of each
   agent's states;
4. trains all agents jointly (training/rl.py);
5. saves every adapter, trained or not, to `<adapter_dir>/phase_<k>/agent_<id>/` (PEFT format)
   and reports one `PhaseRow` per agent.

A phase is deterministic given its starting adapters, its samples and `seed`: every random draw
comes from generators seeded from `seed` and the agent id, inside a fork of the global RNG, and
the optimizer does not outlive the phase. So a phase re-run after a crash (`restore(k - 1)`,
then `run_phase(k, ...)`) writes the same adapters.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from agents.decoding import split_tokens
from agents.llm import LLM
from agents.lora import LoraSpec
from agents.scoring import Trunk, packed_tokens
from core.seeding import child_seed
from training.belief_quality import belief_text_share
from training.config import TrainingConfig
from training.hindsight import standardised_pay
from training.rl import TrainRow, prepare, update_agents
from training.samples import Sample, most_recent

# On a CPU a phase's passes run in chunks of about this many tokens (16 rows of ~150 tokens):
# larger chunks outgrow the caches and are memory-bound. With 8 agents x 8 states of ~150 tokens
# on 2 cores, a phase cost 0.91 s per sample in chunks of 64 rows, 0.63 in chunks of 16 and 0.62
# in chunks of 8 (docs/benchmarks.md). On a GPU the chunk is the generation batch size.
CPU_CHUNK_TOKENS = 2400


@dataclass(frozen=True)
class PhaseRow:
    """One row of the `training` table (docs/schema.md). None = not measured (no update ran)."""

    phase: int
    step: int                         # the last step before the phase
    agent_id: int
    samples: int                      # states the phase learned from (train + held back)
    heldout_states: int
    beliefs: int                      # (state, belief) rows, fresh beliefs included
    epochs: int                       # epochs trained
    kept_epoch: int                   # the epoch whose adapter was kept (0 = the starting one)
    loss: float | None
    decision_kl: float | None         # KL(mirror target || pi) per row, last trained epoch
    belief_kl: float | None           # k3 estimate of KL(adapter || base) per belief token, last epoch
    grad_norm: float | None           # mean over optimizer steps, before clipping
    heldout_pay_before: float | None  # mean exact expected standardised pay on the held-back states
    heldout_pay_after: float | None
    heldout_t: float | None           # paired t of the best epoch's held-back gain over the base model (None: no epoch beat the start, or one held-back state)
    belief_advantage_std: float | None  # spread of belief credit (beliefs_per_state > 1)
    reward_mean: float | None         # of the rewards paid on the samples
    reward_std: float | None
    seconds: float                    # the phase's wall time, shared equally among its agents
    adapter_path: str
    adapter_version: int              # = phase: the adapter the agent decides with from now on
    belief_text_share: float | None   # share of the samples' beliefs that read as market text


def lora_spec(config: TrainingConfig, layer_count: int) -> LoraSpec:
    """Every agent's adapter shape from `[training]`: LoRA on the top `lora_layers` of `layer_count` decoder layers (None: all)."""
    layers = None if config.lora_layers is None else tuple(range(max(layer_count - config.lora_layers, 0), layer_count))
    return LoraSpec(config.lora_rank, config.lora_alpha, tuple(config.target_modules), layers)


class Trainer:
    """Owns the per-agent adapters on `llm.model` and runs the training phases."""

    def __init__(self, llm: LLM, config: TrainingConfig, adapter_dir: Path, agent_ids: list[int], *, reward: str, risk_aversion: float,
                 belief_tokens: int, max_prompt_tokens: int, batch_size: int):
        self.llm, self.config, self.adapter_dir = llm, config, Path(adapter_dir)
        self.agent_ids = list(agent_ids)
        if self.agent_ids != list(range(len(self.agent_ids))):
            raise ValueError("agent ids must be 0..N-1: they index the stacked adapters")
        self.reward, self.risk_aversion = reward, risk_aversion
        self.belief_tokens, self.max_prompt_tokens, self.batch_size = belief_tokens, max_prompt_tokens, batch_size

    def attach(self) -> None:
        """Give every agent a fresh adapter (outputs = the base model's until trained)."""
        self.llm.attach_adapters(len(self.agent_ids), lora_spec(self.config, self.llm.layer_count))

    @property
    def first_adapted_layer(self) -> int:
        layers = self.llm.adapters.spec.layers
        return min(layers) if layers else 0

    def adapter_path(self, phase: int, agent_id: int) -> Path:
        return self.adapter_dir / f"phase_{phase}" / f"agent_{agent_id}"

    def restore(self, phase: int) -> None:
        """Every agent's adapter as saved after phase `phase`; phase 0 = fresh adapters."""
        for agent_id in self.agent_ids:
            if phase == 0:
                self.llm.adapters.reset(agent_id)
            else:
                self.llm.adapters.load_agent(agent_id, self.adapter_path(phase, agent_id))

    def run_phase(self, phase: int, step: int, samples: dict[int, list[Sample]], seed: int, on_agent_done: Callable[[PhaseRow], None] | None = None) -> list[PhaseRow]:
        """Train, save and report every agent; see the module docstring."""
        started = time.perf_counter()
        chosen = {agent_id: most_recent(samples.get(agent_id, []), self.config.max_samples) for agent_id in self.agent_ids}
        devices = [self.llm.device] if self.llm.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            states = self._states(phase, chosen, seed)
            train, heldout = self._split(states, {agent: [sample.step for sample in picked] for agent, picked in chosen.items()})
            rows = [row for agent_states in states.values() for state in agent_states for row in state]
            trunk = Trunk(self.llm, self.first_adapted_layer)
            chunk_rows = self._chunk_rows(rows)
            prepare(trunk, rows, self.config, chunk_rows)
            generators = {agent: torch.Generator().manual_seed(child_seed(seed, "micro-batches", agent)) for agent in train}
            learning = {agent: agent_states for agent, agent_states in train.items() if _learns(agent_states)}
            stats = update_agents(trunk, learning, heldout, self.config, agents=len(self.agent_ids), generators=generators, chunk_rows=chunk_rows)
        seconds = (time.perf_counter() - started) / max(len(self.agent_ids), 1)
        reports = []
        for agent_id in self.agent_ids:
            path = self.llm.adapters.save_agent(agent_id, self.adapter_path(phase, agent_id), self.llm.source.model_id)
            agent_stats, agent_samples = stats.get(agent_id), chosen[agent_id]
            paid = [sample.reward for sample in agent_samples]
            row = PhaseRow(
                phase=phase, step=step, agent_id=agent_id, samples=len(agent_samples),
                heldout_states=len({row.state for row in heldout if row.agent == agent_id}),
                beliefs=sum(len(state) for state in states[agent_id]),
                epochs=agent_stats.epochs if agent_stats else 0, kept_epoch=agent_stats.kept_epoch if agent_stats else 0,
                loss=getattr(agent_stats, "loss", None), decision_kl=getattr(agent_stats, "decision_kl", None),
                belief_kl=getattr(agent_stats, "belief_kl", None), grad_norm=getattr(agent_stats, "grad_norm", None),
                heldout_pay_before=getattr(agent_stats, "heldout_before", None), heldout_pay_after=getattr(agent_stats, "heldout_after", None),
                heldout_t=getattr(agent_stats, "heldout_t", None),
                belief_advantage_std=getattr(agent_stats, "belief_advantage_std", None),
                reward_mean=statistics.fmean(paid) if paid else None, reward_std=statistics.pstdev(paid) if paid else None,
                seconds=seconds, adapter_path=str(path), adapter_version=phase,
                belief_text_share=belief_text_share([s.belief for s in agent_samples], [s.prompt for s in agent_samples]),
            )
            reports.append(row)
            if on_agent_done is not None:
                on_agent_done(row)
        return reports

    def _states(self, phase: int, chosen: dict[int, list[Sample]], seed: int) -> dict[int, list[list[TrainRow]]]:
        """Per agent, per sample: the rows (state, belief) to learn from, written belief first."""
        config, slot = self.config, self.llm.slot
        fresh_count = config.beliefs_per_state - 1
        requests = [(agent_id, sample) for agent_id, agent_samples in chosen.items() for sample in agent_samples for _ in range(fresh_count)]
        fresh = iter(self.llm.generate(
            [sample.prompt for _, sample in requests], [_training_temperature(sample) for _, sample in requests], [agent_id for agent_id, _ in requests],
            belief_tokens=self.belief_tokens, max_prompt_tokens=self.max_prompt_tokens, batch_size=self.batch_size, seed=child_seed(seed, "fresh-beliefs"),
            exact=False,  # their decision distribution is scored with every other row's
        ) if requests else [])
        states, keys = {}, itertools.count()
        for agent_id, agent_samples in chosen.items():
            pay, slopes = standardised_pay([s.realised_return for s in agent_samples], [s.risk_preference for s in agent_samples],
                                   [s.recent_variance for s in agent_samples], kind=self.reward, risk_aversion=self.risk_aversion)
            states[agent_id] = []
            for index, sample in enumerate(agent_samples):
                written = split_tokens(slot, self.belief_tokens, sample.completion_ids)
                # The written belief is a sample of this phase's adapter if it was written since the last phase, by sampling.
                on_policy = sample.adapter_version == phase - 1 and sample.temperature > 0
                rows = [TrainRow(next(keys), agent_id, index, sample.prompt_ids, written.belief_ids, written.marker_ids, _training_temperature(sample), pay[index], float(slopes[index]), on_policy)]
                for _ in range(fresh_count):
                    answer = next(fresh)
                    parts = split_tokens(slot, self.belief_tokens, answer.completion_ids)
                    rows.append(TrainRow(next(keys), agent_id, index, answer.prompt_ids, parts.belief_ids, parts.marker_ids, _training_temperature(sample), pay[index], float(slopes[index]), on_policy=True))
                states[agent_id].append(rows)
        return states

    def _chunk_rows(self, rows: list[TrainRow]) -> int:
        """Rows in one forward/backward pass of the phase: the generation batch size, and on a CPU
        no more than `CPU_CHUNK_TOKENS` tokens' worth of average rows."""
        if self.llm.device.type != "cpu" or not rows:
            return self.batch_size
        tokens = sum(packed_tokens(self.llm, row.prompt_ids, row.belief_ids, row.marker_ids) for row in rows) / len(rows)
        return max(1, min(self.batch_size, int(CPU_CHUNK_TOKENS // tokens)))

    def _split(self, states: dict[int, list[list[TrainRow]]], steps: dict[int, list[int]]) -> tuple[dict[int, list[list[TrainRow]]], list[TrainRow]]:
        """Hold back each agent's latest states (by step), at least `holdout` of them, the rest to
        train on; `steps[agent]` is the step of each of its states. The split is in time, never
        inside one step (its assets stay together): an update is adopted only if it pays on days
        after those it learned from. A random split would let a policy that tells nearby days apart
        (by the price level, say) pass on held-back days that sit between its training days, and
        such a policy has nothing to say about the days the market brings next."""
        train, heldout = {}, []
        for agent_id, agent_states in states.items():
            agent_steps = steps[agent_id]
            count = int(len(agent_states) * self.config.holdout)
            cutoff = sorted(agent_steps)[len(agent_steps) - count] if count else None  # the earliest held-back step
            held = {index for index, step in enumerate(agent_steps) if cutoff is not None and step >= cutoff}
            if len(held) == len(agent_states) > 1:  # every state on one step: hold back the last ones as listed
                held = set(range(len(agent_states) - count, len(agent_states)))
            train[agent_id] = [state for index, state in enumerate(agent_states) if index not in held]
            heldout += [row for index, state in enumerate(agent_states) if index in held for row in state]
        return train, heldout


def _learns(states: list[list[TrainRow]]) -> bool:
    """Whether any state's day carries pay that differs between decisions (all-equal returns teach nothing)."""
    return any(bool(row.pay.abs().max() > 0) for state in states for row in state)


def _training_temperature(sample: Sample) -> float:
    """Beliefs are scored and sampled at the agent's temperature; a greedy agent's at 1."""
    return sample.temperature if sample.temperature > 0 else 1.0
