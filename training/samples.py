"""What a training phase learns from: one agent's decisions since the last phase, with their pay.

A `Sample` is one deliberation: the exact prompt and completion tokens the model saw and
produced (so the update scores the very tokens that were sampled), which of those tokens the
model chose itself (`trainable`: False on the forced `Decision: ` marker), the decision and the
reward it earned once the next return was known. It also keeps what a *hindsight* reward needs to
score a different decision on the same day: the realised return, the agent's temperature, risk
preference and the recent return variance at decision time.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.llm import Completion


@dataclass(frozen=True)
class Sample:
    agent_id: int
    step: int
    prompt: str
    prompt_ids: list[int]
    completion_ids: list[int]       # belief, forced marker, number and the stop token
    trainable: list[bool]           # one per completion token; False on forced marker tokens
    decision_depth: float           # in [-10, 10]
    realised_return: float          # simple return from this step to the next (0.01 = 1 %)
    reward: float                   # what the agent was paid, before `reward_scale`
    belief: str
    temperature: float              # the agent's sampling temperature (0 = greedy)
    risk_preference: float          # in [0, 1], for the risk-adjusted reward
    recent_variance: float          # variance of recent daily returns known at decision time
    adapter_version: int = 0        # the training phases behind the adapter that wrote it


def sample_from_completion(
    completion: Completion,
    *,
    agent_id: int,
    step: int,
    realised_return: float,
    reward: float,
    temperature: float,
    risk_preference: float,
    recent_variance: float,
    adapter_version: int = 0,
) -> Sample:
    """The sample of one settled decision."""
    return Sample(
        agent_id=agent_id,
        step=step,
        prompt=completion.prompt,
        prompt_ids=list(completion.prompt_ids),
        completion_ids=list(completion.completion_ids),
        trainable=list(completion.trainable),
        decision_depth=completion.decision_depth,
        realised_return=realised_return,
        reward=reward,
        belief=completion.belief,
        temperature=temperature,
        risk_preference=risk_preference,
        recent_variance=recent_variance,
        adapter_version=adapter_version,
    )


def most_recent(samples: list[Sample], max_samples: int) -> list[Sample]:
    """The `max_samples` latest samples in step order (all of them if `max_samples` is 0)."""
    ordered = sorted(samples, key=lambda sample: sample.step)
    return ordered[-max_samples:] if max_samples else ordered
