"""Training phases on a tiny random-weight Llama with SmolLM2's tokenizer.

The planted rule: a prompt says the market will go "up" or "down", and the realised return is
+1 % or -1 % accordingly, so a policy earns more the more its decision's sign follows the word.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from agents.llm import LLM
from simulation.config import TrainingConfig
from training import adapters
from training.phase import Trainer
from training.rewards import reward
from training.rl import build_batch, completion_logits, decoding_logits, leave_one_out_advantages, policy_loss, sign_logprobs, token_logprobs, update_adapter, Scored
from training.samples import Sample, most_recent, sample_from_completion
from agents.decoding import number_start

BELIEF_TOKENS = 6
AGENTS = [0, 1, 2]
# The ways a phase forms its groups (training/rl.py): parametrised tests run each.
ALGORITHMS = {
    "reinforce": dict(algorithm="reinforce"),
    "hindsight_grpo": dict(algorithm="hindsight_grpo"),
    "nested": dict(algorithm="hindsight_grpo", group_size=2, decision_samples=3),
    "expected_sign": dict(algorithm="hindsight_grpo", expected_sign=True),
}
FAST = dict(learning_rate=1e-2, micro_batch=8, max_samples=0, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])


def make_trainer(model_dir, adapter_dir, **overrides) -> Trainer:
    llm = LLM.load(str(model_dir), device="cpu")
    trainer = Trainer(llm, TrainingConfig(**{**FAST, **overrides}), adapter_dir, AGENTS, belief_tokens=BELIEF_TOKENS, max_prompt_tokens=128, batch_size=64)
    trainer.attach()
    return trainer


def prompts(llm: LLM, count: int) -> list[str]:
    return [llm.chat_prompt("You are an investor.", f"Day {i}: analysts say the market goes {'up' if i % 2 == 0 else 'down'}.") for i in range(count)]


def planted_return(prompt: str) -> float:
    return 0.01 if "goes up" in prompt else -0.01


def decide(trainer: Trainer, agent_id: int, count: int, seed: int, temperature: float = 1.0, returns=planted_return) -> list[Sample]:
    """`count` settled decisions of one agent on the planted-rule prompts."""
    texts = prompts(trainer.llm, count)
    completions = trainer.llm.generate(texts, [temperature] * count, [trainer.adapter_name(agent_id)] * count, belief_tokens=BELIEF_TOKENS, seed=seed)
    return [
        sample_from_completion(c, agent_id=agent_id, step=step, realised_return=returns(c.prompt), reward=reward("linear", returns(c.prompt), c.decision_depth),
                               temperature=temperature, risk_preference=0.5, recent_variance=1e-4)
        for step, c in enumerate(completions)
    ]


def state(trainer: Trainer, agent_id: int) -> dict[str, torch.Tensor]:
    return adapters.adapter_state(trainer.llm.model, trainer.adapter_name(agent_id))


def base_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in trainer.llm.model.named_parameters() if "lora_" not in name}


def same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)


def sequence_logprobs(trainer: Trainer, agent_id: int, samples: list[Sample]) -> torch.Tensor:
    llm = trainer.llm
    items = [Scored(s.prompt_ids, s.completion_ids, s.trainable, s.temperature) for s in samples]
    batch = build_batch(items, llm.slot, BELIEF_TOKENS, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)
    with torch.no_grad():
        logits = completion_logits(llm.model, batch, [trainer.adapter_name(agent_id)] * len(items))
    return (token_logprobs(logits, batch) * batch.trainable).sum(-1)


def test_phase_changes_only_the_agents_adapter_and_never_the_base_weights(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    before = {agent_id: state(trainer, agent_id) for agent_id in AGENTS}
    base_before = base_weights(trainer)
    trainer.run_phase(1, 9, {0: decide(trainer, 0, 16, seed=1)}, seed=5)
    assert not same(state(trainer, 0), before[0])
    assert same(state(trainer, 1), before[1]) and same(state(trainer, 2), before[2])
    assert same(base_weights(trainer), base_before)


def test_phase_raises_the_probability_of_the_better_paid_completions(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, epochs=2)
    samples = decide(trainer, 0, 16, seed=1)
    advantages = torch.tensor(leave_one_out_advantages([s.reward for s in samples], 1.0))
    before = sequence_logprobs(trainer, 0, samples)
    trainer.run_phase(1, 15, {0: samples}, seed=5)
    after = sequence_logprobs(trainer, 0, samples)
    change = after - before
    assert float((advantages * change).sum()) > 0
    assert float(change[advantages > 0].mean()) > float(change[advantages < 0].mean())


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_phases_raise_the_held_out_reward_in_a_rising_market(tiny_model_dir, tmp_path, algorithm):
    trainer = make_trainer(tiny_model_dir, tmp_path, **ALGORITHMS[algorithm], epochs=2, kl_coef=0.0)
    rising = lambda prompt: 0.01  # every day pays +1 %: the best policy buys at 10

    def held_out_reward() -> float:
        return sum(s.reward for s in decide(trainer, 0, 64, seed=999, returns=rising)) / 64

    untrained = held_out_reward()
    for phase in (1, 2):
        trainer.run_phase(phase, phase, {0: decide(trainer, 0, 16, seed=phase, returns=rising)}, seed=phase)
    assert held_out_reward() > untrained + 0.007  # the mean decision rose by more than 0.7


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_excess_return_leaves_a_uniform_trend_nothing_to_learn(tiny_model_dir, tmp_path, algorithm):
    trainer = make_trainer(tiny_model_dir, tmp_path, **ALGORITHMS[algorithm], excess_return=True)
    before = state(trainer, 0)
    rows = trainer.run_phase(1, 9, {0: decide(trainer, 0, 16, seed=1, returns=lambda prompt: 0.01)}, seed=5)
    assert rows[0].loss is None and same(state(trainer, 0), before)  # every day's excess return is 0
    assert rows[0].reward_mean != 0.0  # the reward paid is still the scenario's


def test_excess_return_reinforces_the_days_that_beat_the_phase_mean(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, epochs=2, excess_return=True)
    rising = lambda prompt: 0.02 if "goes up" in prompt else 0.0  # every day pays a bull; "up" days pay more
    samples = decide(trainer, 0, 16, seed=1, returns=rising)
    mean_return = sum(s.realised_return for s in samples) / len(samples)
    advantages = torch.tensor(leave_one_out_advantages([(s.realised_return - mean_return) * s.decision_depth for s in samples], 1.0))
    before = sequence_logprobs(trainer, 0, samples)
    trainer.run_phase(1, 15, {0: samples}, seed=5)
    change = sequence_logprobs(trainer, 0, samples) - before
    assert float((advantages * change).sum()) > 0
    # on the flat days the reward paid is 0 whatever the depth, yet the buys there lost ground to the sells
    flat = [i for i, s in enumerate(samples) if s.realised_return == 0.0]
    buys = [change[i] for i in flat if samples[i].decision_depth > 0]
    sells = [change[i] for i in flat if samples[i].decision_depth < 0]
    assert buys and sells and float(sum(buys) / len(buys)) < float(sum(sells) / len(sells))


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_phase_is_deterministic_given_its_seed(tiny_model_dir, tmp_path, algorithm):
    trainer = make_trainer(tiny_model_dir, tmp_path, **ALGORITHMS[algorithm], epochs=2, micro_batch=4)
    samples = {0: decide(trainer, 0, 8, seed=1), 1: decide(trainer, 1, 8, seed=2)}
    rng_state = torch.get_rng_state()
    first = trainer.run_phase(1, 7, samples, seed=3)
    trained = {agent_id: state(trainer, agent_id) for agent_id in AGENTS}
    trainer.restore(0)
    second = trainer.run_phase(1, 7, samples, seed=3)
    assert all(same(state(trainer, agent_id), trained[agent_id]) for agent_id in AGENTS)
    assert [row.loss for row in first] == [row.loss for row in second]
    assert torch.equal(torch.get_rng_state(), rng_state)  # the phase leaves the global RNG alone


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_phase_without_samples_or_with_only_zero_rewards_leaves_adapters_unchanged(tiny_model_dir, tmp_path, algorithm):
    trainer = make_trainer(tiny_model_dir, tmp_path, **ALGORITHMS[algorithm])
    trainer.run_phase(1, 9, {0: decide(trainer, 0, 8, seed=1)}, seed=5)  # a trained, non-zero adapter
    before = {agent_id: state(trainer, agent_id) for agent_id in AGENTS}
    flat = decide(trainer, 1, 8, seed=2, returns=lambda prompt: 0.0)
    rows = trainer.run_phase(2, 19, {0: [], 1: flat}, seed=6)
    assert all(same(state(trainer, agent_id), before[agent_id]) for agent_id in AGENTS)
    by_agent = {row.agent_id: row for row in rows}
    assert by_agent[0].samples == 0 and by_agent[0].loss is None and by_agent[2].samples == 0
    assert by_agent[1].samples == 8 and by_agent[1].reward_mean == 0.0 and by_agent[1].loss is None
    assert all((tmp_path / "phase_2" / f"agent_{agent_id}" / adapters.ADAPTER_WEIGHTS).is_file() for agent_id in AGENTS)


def test_phase_reports_one_row_per_agent_as_each_finishes(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_samples=6)
    samples = decide(trainer, 2, 10, seed=1)
    reported = []
    rows = trainer.run_phase(4, 79, {2: samples}, seed=5, on_agent_done=reported.append)
    assert reported == rows and [row.agent_id for row in rows] == AGENTS
    row = rows[2]
    assert (row.phase, row.step, row.samples, row.adapter_version) == (4, 79, 6, 4)
    assert row.adapter_path == str(tmp_path / "phase_4" / "agent_2")
    assert row.reward_mean == pytest.approx(sum(s.reward for s in samples[-6:]) / 6)
    assert all(math.isfinite(value) for value in (row.loss, row.kl, row.grad_norm, row.seconds, row.belief_kl))
    assert row.kl >= 0 and row.belief_kl >= 0 and 0.0 <= row.belief_text_share <= 1.0


def test_restore_brings_back_a_saved_phase_and_phase_zero_is_fresh(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    fresh = state(trainer, 0)
    trainer.run_phase(1, 9, {0: decide(trainer, 0, 8, seed=1)}, seed=5)
    saved = state(trainer, 0)
    trainer.run_phase(2, 19, {0: decide(trainer, 0, 8, seed=2)}, seed=6)
    trainer.restore(1)
    assert same(state(trainer, 0), saved)
    trainer.restore(0)
    assert same(state(trainer, 0), fresh)


def test_carried_optimizer_state_is_saved_and_a_restored_run_goes_on_exactly(tiny_model_dir, tmp_path):
    carried = make_trainer(tiny_model_dir, tmp_path / "carried", carry_optimizer=True)
    carried.run_phase(1, 9, {0: decide(carried, 0, 8, seed=1)}, seed=5)
    assert (tmp_path / "carried" / "phase_1" / "agent_0" / "optimizer.pt").is_file()
    assert not (tmp_path / "carried" / "phase_1" / "agent_1" / "optimizer.pt").exists()  # never updated: nothing to carry
    second = decide(carried, 0, 8, seed=2)
    carried.run_phase(2, 19, {0: second}, seed=6)
    # a new process: the adapter and the moments come back from phase 1's folder
    resumed = make_trainer(tiny_model_dir, tmp_path / "carried", carry_optimizer=True)
    resumed.restore(1)
    resumed.run_phase(2, 19, {0: second}, seed=6)
    assert same(state(resumed, 0), state(carried, 0))
    # the moments matter: the same phase 2 with a fresh optimizer ends elsewhere
    fresh = make_trainer(tiny_model_dir, tmp_path / "carried")
    fresh.restore(1)
    fresh.run_phase(2, 19, {0: second}, seed=6)
    assert not same(state(fresh, 0), state(carried, 0))


def test_scoring_replays_the_decoding_that_generated_the_tokens(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    samples = decide(trainer, 0, 4, seed=1, temperature=0.0)  # greedy: each token is the argmax
    llm = trainer.llm
    items = [Scored(s.prompt_ids, s.completion_ids, s.trainable, 1.0) for s in samples]
    batch = build_batch(items, llm.slot, BELIEF_TOKENS, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)
    with torch.no_grad():
        logits = decoding_logits(completion_logits(llm.model, batch, ["__base__"] * len(items)), batch)
    assert torch.equal(logits.argmax(-1)[batch.valid], batch.targets[batch.valid])
    forced = batch.valid & ~batch.trainable
    assert forced.any() and torch.allclose(token_logprobs(logits, batch)[forced], torch.zeros(int(forced.sum())))


@pytest.mark.parametrize("decision_weight", [1.0, 8.0])
def test_decision_weight_sets_the_number_tokens_share_of_the_policy_gradient(tiny_model_dir, tmp_path, decision_weight):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    samples = decide(trainer, 0, 4, seed=1)
    llm = trainer.llm
    items = [Scored(s.prompt_ids, s.completion_ids, s.trainable, 1.0, advantage) for s, advantage in zip(samples, [1.0, -2.0, 0.5, 3.0])]
    batch = build_batch(items, llm.slot, BELIEF_TOKENS, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)
    with torch.no_grad():
        logprobs = token_logprobs(completion_logits(llm.model, batch, ["__base__"] * len(items)), batch)
    leaf = logprobs.clone().requires_grad_()
    policy_loss(leaf, logprobs, logprobs, batch, kl_coef=0.1, clip_epsilon=0.2, decision_weight=decision_weight).loss.backward()
    per_advantage = -leaf.grad / batch.advantages  # first epoch, at the base: d loss / d log pi = -A * weight / total weight
    number = batch.trainable & ~batch.belief
    belief = batch.trainable & batch.belief
    assert number.any() and belief.any()
    assert torch.allclose(per_advantage[number], torch.full_like(per_advantage[number], float(per_advantage[belief][0]) * decision_weight))
    weights = belief.sum() + decision_weight * number.sum()
    assert torch.allclose(per_advantage[belief], torch.full_like(per_advantage[belief], 1.0 / float(weights)))
    assert float(leaf.grad[~batch.trainable].abs().sum()) == 0.0


def test_kl_clamp_stops_the_penalty_gradient_only_past_the_cap_and_logs_the_uncapped_kl(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    samples = decide(trainer, 0, 4, seed=1)
    llm = trainer.llm
    items = [Scored(s.prompt_ids, s.completion_ids, s.trainable, 1.0, 0.0) for s in samples]  # no advantage: the KL term alone
    batch = build_batch(items, llm.slot, BELIEF_TOKENS, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)
    with torch.no_grad():
        base = token_logprobs(completion_logits(llm.model, batch, ["__base__"] * len(items)), batch)
    # the policy sits below the base by 0.5 nats on even columns (k3 = 0.15) and 5 on odd ones (k3 = 142)
    drift = torch.where(torch.arange(base.shape[1]) % 2 == 0, 0.5, 5.0).expand_as(base)
    far = batch.trainable & (drift > 1.0)
    near = batch.trainable & (drift < 1.0)
    assert far.any() and near.any()
    grads, kls = {}, {}
    for cap in (None, 10.0):
        leaf = (base - drift).clone().requires_grad_()
        terms = policy_loss(leaf, leaf.detach(), base, batch, kl_coef=0.1, clip_epsilon=0.2, decision_weight=1.0, kl_clamp=cap)
        terms.loss.backward()
        grads[cap], kls[cap] = leaf.grad, terms.kl
    assert float(grads[None][far].abs().min()) > 0.0
    assert float(grads[10.0][far].abs().max()) == 0.0  # past the cap: no pull back to the base
    assert torch.allclose(grads[10.0][near], grads[None][near])  # below it: the same penalty
    assert kls[10.0] == kls[None] > 10.0  # the logged kl is the uncapped estimate


def test_nested_groups_credit_a_belief_with_its_decisions_mean_and_a_decision_against_its_siblings(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, **ALGORITHMS["nested"])
    llm, samples = trainer.llm, decide(trainer, 0, 4, seed=1)
    groups = trainer._groups({0: samples, 1: [], 2: []}, seed=5)[0]
    assert [len(group) for group in groups] == [6] * 4  # G = 2 beliefs x M = 3 decisions per state

    def depth(item: Scored) -> float:
        return float(llm.tokenizer.decode(item.completion_ids[number_start(llm.slot, BELIEF_TOKENS, item.completion_ids):], skip_special_tokens=True))

    for sample, group in zip(samples, groups):
        assert group[0].completion_ids == sample.completion_ids  # the decision that was paid is a member
        beliefs = [group[0:3], group[3:6]]
        values = []
        for head, *others in beliefs:
            start = number_start(llm.slot, BELIEF_TOKENS, head.completion_ids)
            assert head.belief_advantage is not None and any(head.trainable[:start])  # the belief learns once, from its head
            for other in others:
                assert other.belief_advantage is None and other.completion_ids[:start] == head.completion_ids[:start]
                assert not any(other.trainable[:start]) and all(other.trainable[start:])
            rewards = [sample.realised_return * depth(item) for item in (head, *others)]
            assert [item.advantage for item in (head, *others)] == pytest.approx(leave_one_out_advantages(rewards, 100.0))
            values.append(sum(rewards) / 3)
        assert [beliefs[0][0].belief_advantage, beliefs[1][0].belief_advantage] == pytest.approx(leave_one_out_advantages(values, 100.0))
    batch = build_batch(groups[0], llm.slot, BELIEF_TOKENS, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)
    head = groups[0][0]
    assert torch.all(batch.advantages[0][batch.belief[0]] == head.belief_advantage)
    assert torch.all(batch.advantages[0][batch.valid[0] & ~batch.belief[0]] == head.advantage)


def test_expected_sign_credits_the_sign_token_with_both_signs_and_leaves_the_other_tokens_alone(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    llm, samples = trainer.llm, decide(trainer, 0, 4, seed=1)
    advantages, flipped = [1.0, -2.0, 0.0, 3.0], [-1.5, 2.0, 4.0, 0.5]
    items = [Scored(s.prompt_ids, s.completion_ids, s.trainable, 1.0, a, flipped_advantage=f) for s, a, f in zip(samples, advantages, flipped)]
    batch = build_batch(items, llm.slot, BELIEF_TOKENS, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)
    sign_ids, signs = llm.slot.sign_tokens
    assert [llm.tokenizer.decode([token]) for token in sign_ids] == ["+", "-"]
    rows = torch.arange(len(items))
    assert bool((batch.sign_column >= 0).all())
    sampled = [signs[sign_ids.index(int(token))] for token in batch.targets[rows, batch.sign_column]]
    for row, sign in enumerate(sampled):  # the sampled sign keeps its advantage; the other sign gets the flipped one
        assert batch.sign_advantages[row].tolist() == [advantages[row] if s == sign else flipped[row] for s in signs]
    with torch.no_grad():
        logits = completion_logits(llm.model, batch, ["__base__"] * len(items))
    logprobs, signs_now = token_logprobs(logits, batch), sign_logprobs(logits, batch)
    assert torch.allclose(signs_now.exp().sum(-1), torch.ones(len(items)))  # only + and - may begin a number
    plain = policy_loss(logprobs, logprobs, logprobs, batch, kl_coef=0.0, clip_epsilon=0.2, decision_weight=1.0)
    leaf, sign_leaf = logprobs.clone().requires_grad_(), signs_now.clone().requires_grad_()
    expected = policy_loss(leaf, logprobs, logprobs, batch, kl_coef=0.0, clip_epsilon=0.2, decision_weight=1.0, sign=(sign_leaf, signs_now))
    expected.loss.backward()
    weights = float(batch.trainable.sum())
    # the loss differs from the sampled estimator only at the sign: E over both signs replaces the sampled one
    at_sign = batch.advantages[rows, batch.sign_column]
    assert float(expected.loss - plain.loss) == pytest.approx(float(-((signs_now.exp() * batch.sign_advantages).sum(-1) - at_sign).sum() / weights), rel=1e-5)
    # first pass: d loss / d log pi(k) = -pi(k) * A_k / tokens for each sign, and nothing through the sampled token there
    assert torch.allclose(sign_leaf.grad, -signs_now.exp() * batch.sign_advantages / weights)
    assert float(leaf.grad[rows, batch.sign_column].abs().sum()) == 0.0
    others = batch.trainable.clone()
    others[rows, batch.sign_column] = False
    assert torch.allclose(leaf.grad[others], (-batch.advantages / weights)[others])


def test_expected_sign_learns_from_groups_whose_members_all_agreed(tiny_model_dir, tmp_path):
    # every member of a group made the same decision, so the sampled advantages are all 0: only
    # the hindsight score of the other sign says which way the day went
    trainer = make_trainer(tiny_model_dir, tmp_path, epochs=2)
    llm, samples = trainer.llm, decide(trainer, 0, 16, seed=1)
    groups = []
    for s in samples:
        rewards = [s.realised_return * s.decision_depth] * 2
        other = leave_one_out_advantages(rewards, 100.0, scored=[-reward for reward in rewards])
        groups.append([Scored(s.prompt_ids, s.completion_ids, s.trainable, 1.0, 0.0, flipped_advantage=f) for f in other])
    assert all(item.learns for group in groups for item in group) and not replace(groups[0][0], flipped_advantage=None).learns
    items = [group[0] for group in groups]
    batch = build_batch(items, llm.slot, BELIEF_TOKENS, llm.model.config.vocab_size, llm.tokenizer.pad_token_id, llm.device)
    assert bool((batch.sign_column >= 0).all())
    plus, minus = (llm.slot.sign_tokens[0].index(llm.tokenizer.convert_tokens_to_ids(text)) for text in ("+", "-"))
    up = torch.tensor([s.realised_return > 0 for s in samples])

    def log_odds_of_long() -> torch.Tensor:
        with torch.no_grad():
            signs = sign_logprobs(completion_logits(llm.model, batch, [trainer.adapter_name(0)] * len(items)), batch)
        return signs[:, plus] - signs[:, minus]

    before_state, before = state(trainer, 0), log_odds_of_long()
    llm.model.set_adapter(trainer.adapter_name(0))
    update_adapter(llm.model, adapters.adapter_parameters(llm.model, trainer.adapter_name(0)), groups, slot=llm.slot, belief_tokens=BELIEF_TOKENS,
                   pad_id=llm.tokenizer.pad_token_id, device=llm.device, learning_rate=1e-2, kl_coef=0.05, clip_epsilon=0.2, grad_clip=1.0,
                   epochs=2, micro_batch=8, generator=torch.Generator().manual_seed(0), decision_weight=1.0)
    assert not same(state(trainer, 0), before_state)
    change = log_odds_of_long() - before
    assert float(change[up].mean()) > float(change[~up].mean()) + 0.1  # long gained on the up days against the down days


def test_leave_one_out_advantages_sum_to_zero_and_need_a_peer():
    advantages = leave_one_out_advantages([0.03, -0.01, 0.01], 100.0)
    assert advantages[0] == pytest.approx(100 * (0.03 - 0.0))
    assert sum(advantages) == pytest.approx(0.0)
    assert leave_one_out_advantages([0.05], 100.0) == [0.0]
    assert leave_one_out_advantages([], 100.0) == []
    # the flipped sign is scored against the same baseline (the others' mean reward)
    assert leave_one_out_advantages([0.03, -0.01, 0.01], 100.0, scored=[-0.03, 0.01, -0.01]) == pytest.approx([100 * (-0.03 - 0.0), 100 * (0.01 - 0.02), 100 * (-0.01 - 0.01)])
    assert leave_one_out_advantages([0.05], 100.0, scored=[-0.05]) == [0.0]


def test_most_recent_keeps_the_latest_samples_in_step_order():
    samples = [Sample(0, step, "p", [1], [2], [True], 1.0, 0.01, 0.01, "b", 1.0, 0.5, 1e-4) for step in range(5)]
    assert [s.step for s in most_recent(list(reversed(samples)), 3)] == [2, 3, 4]
    assert len(most_recent(samples, 0)) == 5
