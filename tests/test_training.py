"""Training phases on a tiny random-weight Llama with SmolLM2's tokenizer.

The planted rule: a prompt says the market will go "up" or "down", and the realised return is
+1 % or -1 % accordingly (plus a little noise), so a policy earns more the more its decision's
sign follows the word. Held-out prompts use other day numbers than the training prompts.
"""

from __future__ import annotations

import pytest
import torch

from agents.decision_tree import DECISION_VALUES
from agents.decoding import split_tokens
from agents.llm import LLM
from agents.scoring import Trunk, score
from market.payoff import reward
from training.config import TrainingConfig
from training.phase import Trainer
from training.rl import (
    TrainRow,
    gain_t,
    heldout_pay,
    leave_one_out,
    prepare,
    row_losses,
)
from training.samples import Sample, most_recent, sample_from_completion

BELIEF_TOKENS = 6
AGENTS = [0, 1, 2]
FAST = {"learning_rate": 2e-2, "micro_batch": 8, "max_samples": 0, "epochs": 3, "holdout": 0.0, "lora_layers": None, "kl_coef": 0.0,
            "target_modules": ["q_proj", "v_proj", "gate_proj", "down_proj"]}


def make_trainer(model_dir, adapter_dir, **overrides) -> Trainer:
    llm = LLM.load(str(model_dir), device="cpu", dtype="float32")
    trainer = Trainer(llm, TrainingConfig(**{**FAST, **overrides}), adapter_dir, AGENTS, reward="linear", risk_aversion=0.0,
                      belief_tokens=BELIEF_TOKENS, max_prompt_tokens=128, batch_size=64)
    trainer.attach()
    return trainer


def prompts(llm: LLM, count: int, first_day: int = 0) -> list[str]:
    return [llm.chat_prompt("You are an investor.", f"Day {first_day + i}: analysts say the market goes {'up' if i % 2 == 0 else 'down'}.") for i in range(count)]


def planted_return(prompt: str, day: int = 0) -> float:
    return (0.01 if "goes up" in prompt else -0.01) + 0.002 * ((day * 7) % 5 - 2)


def decide(trainer: Trainer, agent_id: int, count: int, seed: int, temperature: float = 1.0, returns=planted_return, version: int = 0) -> list[Sample]:
    """`count` settled decisions of one agent on the planted-rule prompts."""
    texts = prompts(trainer.llm, count)
    completions = trainer.llm.generate(texts, [temperature] * count, [agent_id] * count, belief_tokens=BELIEF_TOKENS, seed=seed)
    return [
        sample_from_completion(c, agent_id=agent_id, step=step, realised_return=returns(c.prompt, step), reward=reward("linear", returns(c.prompt, step), c.decision_depth),
                               temperature=temperature, risk_preference=0.5, recent_variance=1e-4, adapter_version=version)
        for step, c in enumerate(completions)
    ]


def expected_decisions(trainer: Trainer, agent_id: int, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.tensor([c.expected_decision for c in trainer.llm.generate(texts, [1.0] * len(texts), [agent_id] * len(texts), belief_tokens=BELIEF_TOKENS, seed=99)])


def up_minus_down(trainer: Trainer, agent_id: int) -> float:
    """Held-out E[d] on 'up' prompts minus on 'down' prompts (days never trained on)."""
    expected = expected_decisions(trainer, agent_id, prompts(trainer.llm, 8, first_day=500))
    return float(expected[0::2].mean() - expected[1::2].mean())


def adapter(trainer: Trainer, agent_id: int) -> dict[str, torch.Tensor]:
    return trainer.llm.adapters.agent_state(agent_id)


def base_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in trainer.llm.model.named_parameters() if "lora_" not in name}


def same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    return left.keys() == right.keys() and all(torch.allclose(left[key], right[key], atol=atol, rtol=0) for key in left)


def test_phase_changes_only_the_trained_agents_adapter_and_never_the_base_weights(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    before = {agent: adapter(trainer, agent) for agent in AGENTS}
    weights = base_weights(trainer)
    trainer.run_phase(1, 15, {0: decide(trainer, 0, 16, seed=1)}, seed=5)
    assert not same(adapter(trainer, 0), before[0])
    assert same(adapter(trainer, 1), before[1]) and same(adapter(trainer, 2), before[2])
    assert same(base_weights(trainer), weights)


def test_phases_learn_to_follow_the_planted_word_on_held_out_prompts(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    gap_before = up_minus_down(trainer, 0)
    start = adapter(trainer, 0)
    for phase in range(1, 4):
        trainer.run_phase(phase, phase * 16, {0: decide(trainer, 0, 16, seed=phase, version=phase - 1)}, seed=phase)
    assert not same(adapter(trainer, 0), start)
    assert up_minus_down(trainer, 0) > gap_before + 1.0  # E[d] after "up" now exceeds E[d] after "down" by a point more


@pytest.mark.parametrize("holdout", [0.0, 0.25])
def test_joint_training_equals_training_each_agent_alone(tiny_model_dir, tmp_path, holdout):
    """The same samples and seeds give each agent the same adapter, and the same early-stopping
    verdicts, whether it trains with the others (one batched pass per step) or alone, up to float
    rounding of the batch padding."""
    joint = make_trainer(tiny_model_dir, tmp_path / "joint", holdout=holdout)
    fresh = {agent: adapter(joint, agent) for agent in (0, 1)}
    samples = {agent: decide(joint, agent, 12, seed=agent + 1) for agent in (0, 1)}
    together = joint.run_phase(1, 12, samples, seed=7)
    for agent in (0, 1):
        alone = make_trainer(tiny_model_dir, tmp_path / f"alone{agent}", holdout=holdout)
        by_itself = alone.run_phase(1, 12, {agent: samples[agent]}, seed=7)[agent]
        assert same(adapter(alone, agent), adapter(joint, agent), atol=1e-5)
        assert (by_itself.epochs, by_itself.kept_epoch) == (together[agent].epochs, together[agent].kept_epoch)
        if holdout == 0.0:
            assert not same(adapter(alone, agent), fresh[agent])


def test_a_phase_in_small_chunks_equals_one_pass_over_all_rows(tiny_model_dir, tmp_path, monkeypatch):
    """On a CPU a phase's rows run in chunks of about CPU_CHUNK_TOKENS tokens; the chunk changes
    the speed, not the result (gradients accumulate over the chunks), up to float rounding."""
    from training import phase

    results = {}
    for name, budget in (("one pass", 10**9), ("small chunks", 1)):
        monkeypatch.setattr(phase, "CPU_CHUNK_TOKENS", budget)
        trainer = make_trainer(tiny_model_dir, tmp_path / name.replace(" ", "_"))
        samples = {agent: decide(trainer, agent, 6, seed=agent + 1) for agent in (0, 1)}
        rows = [row for states in trainer._states(1, samples, 7).values() for state in states for row in state]
        assert trainer._chunk_rows(rows) == (64 if budget > 1 else 1)
        fresh = adapter(trainer, 0)
        trainer.run_phase(1, 6, samples, seed=7)
        results[name] = {agent: adapter(trainer, agent) for agent in (0, 1)}
        assert not same(results[name][0], fresh)
    # Adam divides by the root of each element's squared gradients, so an element whose gradient is
    # near 0 turns rounding into a step: 2e-5 seen on an AVX-512 machine, against entries of ~0.1.
    assert all(same(results["one pass"][agent], results["small chunks"][agent], atol=1e-4) for agent in (0, 1))


def test_phase_is_deterministic_given_its_seed(tiny_model_dir, tmp_path):
    results = []
    for run in range(2):
        trainer = make_trainer(tiny_model_dir, tmp_path / str(run), beliefs_per_state=2, holdout=0.25, kl_coef=0.05)
        trainer.run_phase(1, 12, {0: decide(trainer, 0, 12, seed=3)}, seed=11)
        results.append(adapter(trainer, 0))
    assert same(results[0], results[1])


def test_a_phase_with_nothing_to_learn_leaves_the_adapters_unchanged(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    before = adapter(trainer, 0)
    flat = decide(trainer, 0, 8, seed=2, returns=lambda prompt, day: 0.004)  # every day pays the same: no decision is better
    rows = trainer.run_phase(1, 8, {0: flat, 1: []}, seed=3)
    assert same(adapter(trainer, 0), before)
    assert rows[0].epochs == 0 and rows[1].samples == 0


def test_early_stopping_never_ends_a_phase_worse_on_its_held_back_states(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, holdout=0.5, learning_rate=0.3, epochs=4)  # a rate that overshoots
    kept_earlier = False
    for phase in (1, 2):
        samples = {0: decide(trainer, 0, 12, seed=phase, version=phase - 1)}
        states = trainer._states(phase, samples, seed=phase)
        _, heldout = trainer._split(states, {0: [sample.step for sample in samples[0]]})
        row = trainer.run_phase(phase, phase, samples, seed=phase)[0]
        # the adapter the phase kept, measured again on the same held-back states
        trunk = Trunk(trainer.llm, 0)
        prepare(trunk, heldout, trainer.config, 64)
        measured = float(heldout_pay(trunk, heldout, 64)[0].mean())
        assert measured == pytest.approx(row.heldout_pay_after, abs=1e-5)
        assert row.heldout_pay_after >= row.heldout_pay_before
        kept_earlier |= row.kept_epoch < row.epochs
    assert kept_earlier  # at this rate some epoch overshot and an earlier one was kept


def test_gain_t_is_the_paired_t_statistic_of_the_held_back_gain():
    start = torch.tensor([0.1, -0.2, 0.0, 0.3])
    gain = torch.tensor([0.3, 0.1, 0.2, 0.4])
    assert gain_t(start + gain, start) == pytest.approx(float(gain.mean() / (gain.std() / 2)), rel=1e-6)
    assert gain_t(start - gain, start) == pytest.approx(-float(gain.mean() / (gain.std() / 2)), rel=1e-6)
    assert gain_t(torch.full((3,), 0.5), torch.zeros(3)) == float("inf")  # a gain with no spread
    assert gain_t(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])) == float("-inf")
    assert gain_t(torch.tensor([1.0]), torch.tensor([0.5])) is None  # one state: no standard error


def noise_return(prompt: str, day: int = 0) -> float:
    """A return that has nothing to do with the prompt's word: there is nothing to learn."""
    return 0.01 * (((day * 7919) % 13) - 6) / 6


def test_significance_keeps_the_start_unless_the_held_back_gain_is_real(tiny_model_dir, tmp_path):
    """On noise, some epoch beats the start on the held-back states by chance; with significance
    the agent keeps its starting adapter all the same. On the planted rule the gain is real: it is
    kept, and the held-out metric moves the right way."""
    settings = {"holdout": 0.5, "epochs": 8, "micro_batch": 4}
    free = make_trainer(tiny_model_dir, tmp_path / "free", significance=0.0, **settings)
    chance = free.run_phase(1, 32, {0: decide(free, 0, 32, seed=1, returns=noise_return)}, seed=1)[0]
    assert chance.kept_epoch > 0 and chance.heldout_t is not None and 0 < chance.heldout_t < 2.0

    gated = make_trainer(tiny_model_dir, tmp_path / "gated", significance=2.0, **settings)
    start = adapter(gated, 0)
    row = gated.run_phase(1, 32, {0: decide(gated, 0, 32, seed=1, returns=noise_return)}, seed=1)[0]
    assert row.heldout_t == pytest.approx(chance.heldout_t)  # the same training, then refused
    assert row.kept_epoch == 0 and row.heldout_pay_after == pytest.approx(row.heldout_pay_before)
    assert same(adapter(gated, 0), start)

    planted = make_trainer(tiny_model_dir, tmp_path / "planted", significance=2.0, **settings)
    gap_before, start = up_minus_down(planted, 0), adapter(planted, 0)
    row = planted.run_phase(1, 32, {0: decide(planted, 0, 32, seed=1)}, seed=1)[0]
    assert row.kept_epoch > 0 and row.heldout_t >= 2.0
    assert not same(adapter(planted, 0), start)
    assert up_minus_down(planted, 0) > gap_before + 1.0


def test_the_significance_test_weighs_the_whole_gain_over_the_base_model_not_the_phases_step(tiny_model_dir, tmp_path):
    """A second phase on the planted rule starts from an adapter that already pays. Its t is the
    kept adapter's held-back gain over the base model, which counts what the agent learned in the
    first phase, not only the second phase's step over its start."""
    trainer = make_trainer(tiny_model_dir, tmp_path, significance=2.0, holdout=0.5, epochs=8, micro_batch=4)
    assert trainer.run_phase(1, 32, {0: decide(trainer, 0, 32, seed=1)}, seed=1)[0].kept_epoch > 0
    samples = {0: decide(trainer, 0, 32, seed=2, version=1)}
    _, heldout = trainer._split(trainer._states(2, samples, seed=2), {0: [sample.step for sample in samples[0]]})
    trunk = Trunk(trainer.llm, 0)
    prepare(trunk, heldout, trainer.config, 64)
    start, base = heldout_pay(trunk, heldout, 64)[0], heldout_pay(trunk, heldout, 64, adapters=False)[0]
    assert float(start.mean()) > float(base.mean())  # the first phase's adapter already pays more

    row = trainer.run_phase(2, 64, samples, seed=2)[0]
    kept = heldout_pay(trunk, heldout, 64)[0]
    assert row.kept_epoch > 0 and float(kept.mean()) == pytest.approx(row.heldout_pay_after, abs=1e-5)
    assert row.heldout_t == pytest.approx(gain_t(kept, base), rel=1e-4)
    assert row.heldout_t > gain_t(kept, start)  # the step alone is weaker evidence than the whole gain


def test_a_single_held_back_state_cannot_pass_the_significance_test(tiny_model_dir, tmp_path):
    """One held-back state has no standard error: its gain is no evidence, so a phase that holds
    back one state keeps the start, unless significance is 0 (then the best epoch is adopted)."""
    settings = {"holdout": 0.125, "epochs": 4, "micro_batch": 4}  # 8 states on 8 steps: 1 held back
    free = make_trainer(tiny_model_dir, tmp_path / "free", significance=0.0, **settings)
    start = adapter(free, 0)
    row = free.run_phase(1, 8, {0: decide(free, 0, 8, seed=1)}, seed=1)[0]
    assert row.kept_epoch > 0 and row.heldout_t is None and row.heldout_pay_after > row.heldout_pay_before
    assert not same(adapter(free, 0), start)

    gated = make_trainer(tiny_model_dir, tmp_path / "gated", significance=1.5, **settings)
    start = adapter(gated, 0)
    row = gated.run_phase(1, 8, {0: decide(gated, 0, 8, seed=1)}, seed=1)[0]
    assert row.kept_epoch == 0 and row.heldout_t is None
    assert same(adapter(gated, 0), start)


def test_the_held_back_states_are_the_latest_and_a_step_is_never_split(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, holdout=0.25)
    samples = decide(trainer, 0, 8, seed=1)
    # eight states on steps 3, 1, 4, 1, 5, 9, 2, 9 (two assets on steps 1 and 9), listed out of order
    steps = [3, 1, 4, 1, 5, 9, 2, 9]
    states = trainer._states(1, {0: samples}, seed=1)
    train, heldout = trainer._split(states, {0: steps})
    assert {row.state for row in heldout} == {5, 7}  # both states of step 9, the latest
    assert sorted(row.state for state in train[0] for row in state) == [0, 1, 2, 3, 4, 6]
    _, heldout = trainer._split(states, {0: [3, 1, 4, 1, 5, 9, 2, 5]})  # 2 to hold back; step 5 has two states
    assert {row.state for row in heldout} == {4, 5, 7}  # steps 9 and 5, whole


def _rows(trainer: Trainer, texts: list[str], pay: torch.Tensor) -> list[TrainRow]:
    completions = trainer.llm.generate(texts, [1.0] * len(texts), [0] * len(texts), belief_tokens=BELIEF_TOKENS, seed=4)
    rows = []
    for key, completion in enumerate(completions):
        parts = split_tokens(trainer.llm.slot, BELIEF_TOKENS, completion.completion_ids)
        rows.append(TrainRow(key, 0, 0, completion.prompt_ids, parts.belief_ids, parts.marker_ids, 1.0, pay, 0.0, on_policy=True))
    return rows


def test_belief_credit_raises_the_beliefs_worth_more_and_lowers_the_others(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, beliefs_per_state=2, trust=0.0)
    llm = trainer.llm
    text = prompts(llm, 1)[0]
    rows = _rows(trainer, [text, text], torch.zeros(len(DECISION_VALUES)))  # no pay: only belief credit moves
    trunk = Trunk(llm, 0)
    prepare(trunk, rows, trainer.config, 8)
    rows[0].advantage, rows[1].advantage = 1.0, -1.0

    def belief_logprob() -> torch.Tensor:
        with torch.no_grad():
            scored = score(llm, [r.prompt_ids for r in rows], [r.belief_ids for r in rows], [r.marker_ids for r in rows], [0, 0], torch.ones(2))
        return scored.belief_logprobs.sum(-1)

    before = belief_logprob()
    losses = row_losses(trunk, rows, trainer.config, {0: 0.0})
    losses.total.sum().backward()
    with torch.no_grad():
        for param in llm.adapters.parameters():
            param -= 0.05 * param.grad
    after = belief_logprob()
    assert after[0] > before[0] and after[1] < before[1]


def test_a_greedy_agents_beliefs_and_an_older_adapters_are_not_credited(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    fresh = decide(trainer, 0, 4, seed=1, version=0)
    greedy = decide(trainer, 1, 4, seed=1, temperature=0.0, version=0)
    old = decide(trainer, 2, 4, seed=1, version=0)
    states = trainer._states(2, {0: fresh, 1: greedy, 2: old}, seed=1)  # phase 2 trains the adapters of phase 1
    assert not any(row.on_policy for state in states[0] + states[1] + states[2] for row in state)
    states = trainer._states(1, {0: fresh, 1: greedy}, seed=1)
    assert all(row.on_policy for state in states[0] for row in state)
    assert not any(row.on_policy for state in states[1] for row in state)


def test_leave_one_out_credits_a_value_against_the_others_mean():
    assert leave_one_out([1.0, 0.0, 2.0]) == pytest.approx([0.0, -1.5, 1.5])
    assert sum(leave_one_out([0.3, -0.2, 0.9, 0.1])) == pytest.approx(0.0)
    assert leave_one_out([5.0]) == [0.0]


def test_most_recent_keeps_the_latest_samples_in_step_order(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    samples = decide(trainer, 0, 6, seed=1)
    shuffled = [samples[i] for i in (3, 0, 5, 1, 4, 2)]
    assert [s.step for s in most_recent(shuffled, 3)] == [3, 4, 5]
    assert [s.step for s in most_recent(shuffled, 0)] == list(range(6))


def test_restore_brings_back_a_saved_phase_and_phase_zero_is_fresh(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    fresh = adapter(trainer, 0)
    trainer.run_phase(1, 8, {0: decide(trainer, 0, 8, seed=1)}, seed=2)
    trained = adapter(trainer, 0)
    trainer.restore(0)
    assert same(adapter(trainer, 0), fresh)
    trainer.restore(1)
    assert same(adapter(trainer, 0), trained)
