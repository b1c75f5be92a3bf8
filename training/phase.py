"""A training phase: every agent's adapter learns from that agent's own samples, then is saved.

The simulation owns one `Trainer`. `attach` wraps the shared base model once in a PeftModel with
one fresh adapter per agent; from then on every generation names each row's adapter. Every
`training.every` steps the simulation calls `run_phase` with each agent's samples since the last
phase. The phase:

1. keeps each agent's `max_samples` most recent samples;
2. for `hindsight_grpo`, samples the extra group members of every agent in one batched
   `generate` call (each row on its own adapter), with `decision_samples` > 1 also the extra
   decisions after every member's belief in one batched `redecide` call, and scores them all
   against the realised returns;
3. trains the agents one after another (see training/rl.py), each on its own adapter only;
4. saves every adapter, trained or not, to `<adapter_dir>/phase_<k>/agent_<id>/` (PEFT format)
   and reports one `PhaseRow` per agent, as soon as that agent is done.

**Excess return** (`training.excess_return`, off by default). With the linear reward a group's
leave-one-out advantages are `r_day * (d_i - mean of the others)`. Summed over a phase whose days
mostly rose, that is a push towards larger depths on every day alike: the agent learns "be
bullish", which pays only while the window keeps rising, and it can swamp the timing signal
(benchmarks/results/learning-seeds345.json). With `excess_return` every sample is scored against
`r_day - mean r` over the agent's phase samples instead, so a policy that does the same thing on
every day gets a zero advantage on average and only decisions that track the day-to-day
differences are reinforced. The reward that is paid, stored and reported stays the scenario's.

A phase is deterministic given its starting adapters, its samples and `seed`: every random draw
comes from generators seeded from `seed` and the agent id, inside a fork of the global RNG, which
is left as it was. So a phase re-run after a crash (`restore(k - 1)`, then `run_phase(k, ...)`)
writes the same adapters. The optimizer does not outlive a phase, for the same reason, unless
`training.carry_optimizer` is on: then each agent's AdamW state after phase k is saved as
`<adapter folder>/optimizer.pt` (the folder stays a loadable PEFT adapter) and `restore(k)` loads
it too, so the re-run is still identical.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from agents.llm import LLM, Completion
from simulation.config import TrainingConfig
from simulation.seeding import child_seed
from training import adapters
from training.belief_quality import belief_text_share
from training.rewards import reward
from training.rl import Scored, leave_one_out_advantages, update_adapter
from training.samples import Sample, most_recent

OPTIMIZER_STATE = "optimizer.pt"


@dataclass(frozen=True)
class PhaseRow:
    """One row of the `training` table (docs/schema.md). None = not measured: no update ran."""

    phase: int
    step: int                        # the last step before the phase
    agent_id: int
    samples: int                     # the agent's samples the phase learned from
    loss: float | None
    kl: float | None                 # k3 estimate of KL(adapter || base) per trainable token
    reward_mean: float | None        # of the rewards paid on those samples (before reward_scale)
    reward_std: float | None
    grad_norm: float | None          # mean over optimizer steps, before clipping
    seconds: float                   # this agent's update plus its share of group sampling
    adapter_path: str
    adapter_version: int             # = phase: the adapter the agent decides with from now on
    belief_kl: float | None          # k3 per belief token, in the last epoch
    belief_text_share: float | None  # share of the samples' beliefs that read as market text


class Trainer:
    """Owns the per-agent adapters on `llm.model` and runs the training phases."""

    def __init__(self, llm: LLM, config: TrainingConfig, adapter_dir: Path, agent_ids: list[int], *, belief_tokens: int, max_prompt_tokens: int, batch_size: int):
        self.llm, self.config, self.adapter_dir = llm, config, Path(adapter_dir)
        self.agent_ids = list(agent_ids)
        self.belief_tokens, self.max_prompt_tokens, self.batch_size = belief_tokens, max_prompt_tokens, batch_size
        self.optimizer_states: dict[int, dict] = {}  # per agent, with carry_optimizer: AdamW state after the last update

    @staticmethod
    def adapter_name(agent_id: int) -> str:
        return adapters.adapter_name(agent_id)

    def attach(self) -> None:
        """Wrap `llm.model` in a PeftModel with one fresh adapter per agent (outputs = base)."""
        config = self.config
        lora = adapters.lora_config(config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules)
        self.llm.model = adapters.attach_adapters(self.llm.model, self.agent_ids, lora)

    def adapter_path(self, phase: int, agent_id: int) -> Path:
        return self.adapter_dir / f"phase_{phase}" / f"agent_{agent_id}"

    def restore(self, phase: int) -> None:
        """Every agent's adapter (and, with carry_optimizer, optimizer state) as saved after phase
        `phase`; phase 0 = fresh adapters."""
        self.optimizer_states.clear()
        for agent_id in self.agent_ids:
            if phase == 0:
                adapters.reset(self.llm.model, agent_id)
                continue
            folder = self.adapter_path(phase, agent_id)
            adapters.load_adapter(self.llm.model, self.adapter_name(agent_id), folder)
            if self.config.carry_optimizer and (folder / OPTIMIZER_STATE).is_file():
                self.optimizer_states[agent_id] = torch.load(folder / OPTIMIZER_STATE, map_location="cpu", weights_only=True)  # AdamW moves the moments to the parameters

    def run_phase(self, phase: int, step: int, samples: dict[int, list[Sample]], seed: int, on_agent_done: Callable[[PhaseRow], None] | None = None) -> list[PhaseRow]:
        """Train, save and report every agent; see the module docstring."""
        chosen = {agent_id: most_recent(samples.get(agent_id, []), self.config.max_samples) for agent_id in self.agent_ids}
        devices = [self.llm.device] if self.llm.device.type == "cuda" else []
        rows = []
        with torch.random.fork_rng(devices=devices):
            started = time.perf_counter()
            groups = self._groups(chosen, seed)
            sampling_seconds = time.perf_counter() - started
            total_items = sum(len(group) for agent_groups in groups.values() for group in agent_groups) or 1
            for agent_id in self.agent_ids:
                share = sampling_seconds * sum(len(group) for group in groups[agent_id]) / total_items
                row = self._train_agent(phase, step, agent_id, chosen[agent_id], groups[agent_id], seed, share)
                rows.append(row)
                if on_agent_done is not None:
                    on_agent_done(row)
        return rows

    def _groups(self, chosen: dict[int, list[Sample]], seed: int) -> dict[int, list[list[Scored]]]:
        """Each agent's completions to learn from, with leave-one-out advantages, in groups that
        share a prompt (one group per sample for reinforce, whose baseline spans all of them)."""
        config = self.config
        benchmarks = {agent_id: self._benchmark_return(agent_samples) for agent_id, agent_samples in chosen.items()}
        if config.algorithm == "reinforce":
            groups = {}
            for agent_id, agent_samples in chosen.items():
                # the paid reward less benchmark * depth: (r - b) d = r d - b d, and the risk penalty does not depend on r
                rewards = [sample.reward - benchmarks[agent_id] * sample.decision_depth for sample in agent_samples]
                advantages = leave_one_out_advantages(rewards, config.reward_scale)
                flipped = self._flipped_advantages(rewards, agent_samples, agent_samples, benchmarks[agent_id])
                groups[agent_id] = [[_scored(sample, sample.temperature, advantage, other)]
                                    for sample, advantage, other in zip(agent_samples, advantages, flipped)]
            return groups
        requests = [(agent_id, sample) for agent_id, agent_samples in chosen.items() for sample in agent_samples for _ in range(config.group_size - 1)]
        completions = iter(self.llm.generate(
            [sample.prompt for _, sample in requests],
            [_sampling_temperature(sample) for _, sample in requests],
            [self.adapter_name(agent_id) for agent_id, _ in requests],
            belief_tokens=self.belief_tokens, max_prompt_tokens=self.max_prompt_tokens, batch_size=self.batch_size, seed=seed,
        ) if requests else [])
        members = {agent_id: [[sample] + [next(completions) for _ in range(config.group_size - 1)] for sample in agent_samples]
                   for agent_id, agent_samples in chosen.items()}
        if config.decision_samples > 1:
            return self._nested_groups(members, benchmarks, seed)
        groups = {}
        for agent_id, agent_groups in members.items():
            groups[agent_id] = []
            for group in agent_groups:
                sample = group[0]
                rewards = [self._hindsight_reward(sample, member.decision_depth, benchmarks[agent_id]) for member in group]
                advantages = leave_one_out_advantages(rewards, config.reward_scale)
                flipped = self._flipped_advantages(rewards, [sample] * len(group), group, benchmarks[agent_id])
                groups[agent_id].append([_scored(member, sample.temperature, advantage, other) for member, advantage, other in zip(group, advantages, flipped)])
        return groups

    def _nested_groups(self, members: dict[int, list[list[Sample | Completion]]], benchmarks: dict[int, float], seed: int) -> dict[int, list[list[Scored]]]:
        """`decision_samples` M > 1: every belief of a hindsight group also gets M - 1 fresh
        decisions after it (one batched `redecide`), so a belief is credited with its value, the
        mean reward of its M decisions, against the other beliefs of its group, and a decision with
        its reward against the other decisions after the same belief (training/rl.py). A group's
        first member is the phase sample that was paid; its day's return scores them all."""
        config, count = self.config, self.config.decision_samples
        requests = [(agent_id, group[0], member) for agent_id, agent_groups in members.items()
                    for group in agent_groups for member in group for _ in range(count - 1)]
        redecided = iter(self.llm.redecide(
            [member for _, _, member in requests], [_sampling_temperature(sample) for _, sample, _ in requests],
            [self.adapter_name(agent_id) for agent_id, _, _ in requests],
            belief_tokens=self.belief_tokens, batch_size=self.batch_size, seed=child_seed(seed, "redecide"),
        ) if requests else [])
        groups = {}
        for agent_id, agent_groups in members.items():
            groups[agent_id] = []
            for group in agent_groups:
                sample = group[0]
                decisions = [[member] + [next(redecided) for _ in range(count - 1)] for member in group]
                rewards = [[self._hindsight_reward(sample, answer.decision_depth, benchmarks[agent_id]) for answer in row] for row in decisions]
                belief_advantages = leave_one_out_advantages([statistics.fmean(row) for row in rewards], config.reward_scale)
                scored = []
                for row, row_rewards, belief_advantage in zip(decisions, rewards, belief_advantages):
                    advantages = leave_one_out_advantages(row_rewards, config.reward_scale)
                    flipped = self._flipped_advantages(row_rewards, [sample] * len(row), row, benchmarks[agent_id])
                    scored.append(replace(_scored(row[0], sample.temperature, advantages[0], flipped[0]), belief_advantage=belief_advantage))
                    scored += [_scored(answer, sample.temperature, advantage, other) for answer, advantage, other in zip(row[1:], advantages[1:], flipped[1:])]
                groups[agent_id].append(scored)
        return groups

    def _benchmark_return(self, agent_samples: list[Sample]) -> float:
        """The return the learning signal is measured against: 0, or with `excess_return` the
        mean realised return of the agent's phase samples."""
        if not self.config.excess_return or not agent_samples:
            return 0.0
        return statistics.fmean(sample.realised_return for sample in agent_samples)

    def _flipped_advantages(self, rewards: list[float], days: list[Sample], answers: list[Sample | Completion], benchmark_return: float) -> list[float | None]:
        """With `expected_sign`, each answer's advantage had its decision's sign been the other
        (scored on its day in hindsight, against the same baseline); otherwise None each."""
        if not self.config.expected_sign:
            return [None] * len(answers)
        flipped = [self._hindsight_reward(day, -answer.decision_depth, benchmark_return) for day, answer in zip(days, answers)]
        return leave_one_out_advantages(rewards, self.config.reward_scale, scored=flipped)

    def _hindsight_reward(self, sample: Sample, decision_depth: float, benchmark_return: float) -> float:
        """What `decision_depth` would have earned on the sample's day, the return held fixed (less
        `benchmark_return`: see `excess_return` in the module docstring)."""
        return reward(
            self.config.reward, sample.realised_return - benchmark_return, decision_depth,
            risk_preference=sample.risk_preference, risk_aversion=self.config.risk_aversion, recent_variance=sample.recent_variance,
        )

    def _train_agent(self, phase: int, step: int, agent_id: int, agent_samples: list[Sample], groups: list[list[Scored]], seed: int, sampling_seconds: float) -> PhaseRow:
        started = time.perf_counter()
        name, config, model = self.adapter_name(agent_id), self.config, self.llm.model
        stats = None
        if any(item.learns for group in groups for item in group):
            model.set_adapter(name)  # the only adapter that is active and has requires_grad
            agent_seed = _agent_seed(seed, agent_id)
            generator = torch.Generator().manual_seed(agent_seed)
            torch.manual_seed(agent_seed)  # LoRA dropout, if configured
            stats = update_adapter(
                model, adapters.adapter_parameters(model, name), groups,
                slot=self.llm.slot, belief_tokens=self.belief_tokens, pad_id=self.llm.tokenizer.pad_token_id, device=self.llm.device,
                learning_rate=config.learning_rate, kl_coef=config.kl_coef, clip_epsilon=config.clip_epsilon,
                grad_clip=config.grad_clip, epochs=config.epochs, micro_batch=config.micro_batch, generator=generator,
                decision_weight=config.decision_weight, kl_clamp=config.kl_clamp, optimizer_state=self.optimizer_states.get(agent_id),
            )
            if config.carry_optimizer:
                self.optimizer_states[agent_id] = stats.optimizer_state
        path = adapters.save_adapter(model, name, self.adapter_path(phase, agent_id))
        if agent_id in self.optimizer_states:  # an agent never updated has no state to carry
            torch.save(self.optimizer_states[agent_id], path / OPTIMIZER_STATE)
        paid = [sample.reward for sample in agent_samples]
        return PhaseRow(
            phase=phase, step=step, agent_id=agent_id, samples=len(agent_samples),
            loss=stats.loss if stats else None, kl=stats.kl if stats else None,
            reward_mean=statistics.fmean(paid) if paid else None, reward_std=statistics.pstdev(paid) if paid else None,
            grad_norm=stats.grad_norm if stats else None,
            seconds=time.perf_counter() - started + sampling_seconds,
            adapter_path=str(path), adapter_version=phase,
            belief_kl=stats.belief_kl if stats else None,
            belief_text_share=belief_text_share([s.belief for s in agent_samples], [s.prompt for s in agent_samples]),
        )


def _agent_seed(seed: int, agent_id: int) -> int:
    return int(np.random.SeedSequence([seed, agent_id]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _sampling_temperature(sample: Sample) -> float:
    """Group members are sampled, also for a greedy agent (temperature 1 then)."""
    return sample.temperature if sample.temperature > 0 else 1.0


def _scored(answer: Sample | Completion, temperature: float, advantage: float, flipped_advantage: float | None = None) -> Scored:
    return Scored(answer.prompt_ids, answer.completion_ids, answer.trainable, temperature, advantage, flipped_advantage=flipped_advantage)
