"""The RL update of one agent's LoRA adapter: a clipped policy gradient with a KL leash to the base.

What is optimised is the probability of the agent's own completions (belief tokens, then the
decision number), weighted by how much better each one paid than its peers.

**Advantages (leave-one-out baselines, no std normalisation).** Completions are scored in
groups and each completion's baseline is the mean reward of the *other* completions of its group
(RLOO), so the baseline never contains the completion's own reward:
`A_i = reward_scale * (R_i - mean_{j != i} R_j)`. There is no division by the group's reward
std (as in Dr. GRPO): dividing would give a day with a 0.01 % return the same weight as a day
with a 3 % return. Two ways to form the groups (`training.algorithm`):

- `reinforce`: the group is all of the agent's samples of the phase, i.e. REINFORCE with a
  per-agent baseline (the agent's average pay in the phase). Cheap, but the return's noise from
  day to day goes straight into the advantage, so it learns slowly.
- `hindsight_grpo`: for each past state the agent answers again, G-1 more times with its current
  adapter (batched across agents, each row on its own adapter); the original completion is the
  G-th member. Every member is scored against the return that was realised that day, *held
  fixed*. This removes the return's noise from the comparison, since all members bet on the same
  day. It is honest only while one agent's own price impact is small: a decision `delta` points
  different would have moved the price by `impact * delta / (10 N)` more, which the hindsight
  reward ignores. With the base scenario's impact (0.002) and 9 agents, 10 points move the price
  by 0.02 %, against daily moves of ~1 %.
- `hindsight_grpo` with `decision_samples` M > 1 (**nested groups**): each of the G beliefs also
  gets M - 1 fresh decisions sampled after it, the belief held fixed (`LLM.redecide`). The two
  parts of a completion are then credited separately. A decision's tokens get
  `reward_scale * (R_ij - mean of the other decisions after the same belief)`: the belief, the day
  and the return are shared, so only the decision explains the difference. A belief's tokens get
  `reward_scale * (V_i - mean of the other beliefs' V)`, with `V_i` the mean reward of its M
  decisions, an estimate of what the belief is worth that one lucky or unlucky number does not
  decide. The belief's tokens are trained once, on its first member (`Scored.belief_advantage`);
  in the other M - 1 they are context (not `trainable`). With M = 1 every token of a completion
  shares one advantage, as above, and the number is a few tokens among the belief's many
  (see token weights below), so the sign, the token the market pays for, gets a small and noisy
  share of each step's gradient.

**Expected sign** (`training.expected_sign`, off by default). The decision's first token is its
sign, `+` or `-`, the one choice the market pays most for. The sampled estimator credits it
through the sign that happened to be drawn: `A_i * grad log pi(sign_i)`, whose expectation is
`sum_s grad pi(s) * A(s)`. In hindsight the other sign's reward is known too, the day's return held
fixed and the same depth (`F_i = reward(-d_i)`), so that expectation is computed exactly instead:
the all-action policy gradient of a two-way choice (the sum over actions in Sutton et al. 2000; Mean Actor-Critic,
Asadi et al. 2017), with `A(sampled) = A_i` and `A(other) = scale * (F_i - baseline_i)`, the same
leave-one-out baseline (`leave_one_out_advantages(..., scored=)`). It is unbiased for the sign given the depth that
was written after it, and removes two noises from the token the market pays: which sign was drawn,
and the baseline (`sum_s grad pi(s) * b = 0` exactly). It matters most where a sampled estimator
learns nothing: SmolLM2-135M goes short in about 1 decision in 10, so most groups of 4 are all
long, their sampled advantages differ only by depth, and the short that would have paid is never
credited; here every sample says how much better the other sign would have done. From the second
epoch each sign's term is clipped as PPO clips a sampled token's: `sum_k pi_old(k) * min(rho_k A_k,
clip(rho_k) A_k)`. The belief and the other number tokens keep the sampled estimator.

**Loss**, per token of a completion the model chose itself (the forced `Decision: ` marker
tokens are excluded), averaged over the micro-batch's tokens (token-level, as in DAPO):
`-min(rho * A, clip(rho, 1-eps, 1+eps) * A) + kl_coef * k3`, where `rho = pi / pi_old` and
`k3 = pi_base/pi - log(pi_base/pi) - 1` is the unbiased, non-negative per-token estimate of
KL(pi || pi_base) that GRPO uses, with pi_base the base model (the adapter disabled); with
`training.kl_clamp` each token's k3 in the loss is capped there, as verl's low_var_kl does (a
token that has fallen far below the base, k3 ~ pi_base/pi, would otherwise take most of a
clipped step's gradient). In the
first epoch `pi_old` is the policy itself (rho = 1, the plain policy gradient); later epochs
reuse those first-pass log-probs, so rho and its clip keep repeated passes near the policy that
sampled. **Token weights** (`training.decision_weight`, default 1): the mean is weighted, belief
tokens 1 and decision-number tokens `decision_weight`. A completion is up to `belief_tokens`
belief tokens and a 4-5 token number (sign, digits, point, tenths in SmolLM2's tokenizer), and
every token carries the completion's advantage; at weight 1 and 16 belief tokens the number is
~20 % of the loss and its sign, the token the market pays most for, ~5 %; the belief tokens, whose
credit is noisy (many beliefs lead to the same number), are the rest. A weight of about
`belief_tokens / 4` gives the number as much weight as the belief.
Probabilities are those of the decoding that produced the tokens: the agent's
temperature (1 for greedy agents) and the decision slot's constraints (only number-prefix tokens
inside the number, no end-of-sequence inside the belief), so the gradient is the gradient of the
distribution that was actually sampled. Gradients are clipped to `grad_clip` per optimizer step;
one AdamW step per micro-batch. By default the optimizer is fresh in every phase, so a phase
depends only on its starting adapter, its samples and its seed (a phase re-run after a crash is
identical). A fresh AdamW's first steps move every parameter by about the learning rate whatever
its gradient's size (m / sqrt(v) is +-1 at step one), so with small micro-batches, whose gradients
are mostly noise, each phase opens with a burst of noise-sized steps. `training.carry_optimizer`
passes the moments on from phase to phase instead (`optimizer_state` in, `UpdateStats.optimizer_state`
out; training/phase.py saves them beside the adapter, so resume stays exact).

**Cost.** On a CPU the forward/backward passes are the whole cost, so: the LM head runs only on
completion positions (49k-152k vocabulary columns over a 150-token prompt would dominate); the
base model's log-probs come from one no-grad pass with the adapter disabled; and a group's
members share one pass over their common prompt, whose key/value cache the completions then
attend to. The gradient flows back through that cache, so it is the exact gradient.

**Why not TRL's GRPOTrainer.** It owns the loop: it samples prompts from a dataset, generates,
calls reward functions *immediately* and steps. A market pays a decision only one step later,
after every agent's decision has moved the price, and a phase trains N adapters on one base
model with generation batched across agents; the trainer's loop, accelerator state and dataset
plumbing fit none of that. This module keeps GRPO's loss (k3 KL, PPO-style clip) and uses TRL's
`selective_log_softmax` for the memory-lean log-prob gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl.trainer.utils import selective_log_softmax

from agents.decoding import MIN_BELIEF_TOKENS, SlotState, SlotVocabulary, left_pad, number_start

BANNED_LOGIT = -1e9


@dataclass(frozen=True)
class Scored:
    """One completion to learn from: its tokens, its decoding temperature and its advantage
    (`belief_advantage`, if given, replaces it on the belief tokens)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    trainable: list[bool]
    temperature: float
    advantage: float = 0.0
    belief_advantage: float | None = None
    flipped_advantage: float | None = None  # with expected_sign: the advantage had its decision's sign been the other

    @property
    def learns(self) -> bool:
        """Whether it carries any non-zero advantage (belief, decision or flipped sign); a phase with none skips the update."""
        return self.advantage != 0.0 or bool(self.belief_advantage) or bool(self.flipped_advantage)


def leave_one_out_advantages(rewards: list[float], scale: float, scored: list[float] | None = None) -> list[float]:
    """`scale * (S_i - mean of the others' R)`, with `S` = the rewards themselves, or `scored` (e.g.
    what each completion would have earned with its decision's sign flipped) against the same
    baselines; a group of one has no baseline, so advantage 0."""
    count = len(rewards)
    if count < 2:
        return [0.0] * count
    total = sum(rewards)
    return [scale * (value - (total - reward) / (count - 1)) for reward, value in zip(rewards, scored if scored is not None else rewards)]


@dataclass
class CompletionBatch:
    """Completions and the prompts they answer, and per completion position what the loss needs.

    Each distinct prompt appears once (left-padded); `prompt_index` says which prompt each
    completion row continues, so the G members of a hindsight group share one prompt pass.
    Completions are right-padded and start at column 0.
    """

    prompt_ids: torch.Tensor       # [prompts, prompt length]
    prompt_mask: torch.Tensor      # [prompts, prompt length]
    prompt_index: torch.Tensor     # [rows] the prompt of each completion
    targets: torch.Tensor          # [rows, width] completion tokens
    valid: torch.Tensor            # [rows, width] bool: a real completion token
    trainable: torch.Tensor        # [rows, width] bool: valid and chosen by the model
    belief: torch.Tensor           # [rows, width] bool: a belief token
    banned: torch.Tensor           # [rows, width, vocab] bool: excluded by the decision slot
    temperatures: torch.Tensor     # [rows, 1, 1]
    advantages: torch.Tensor       # [rows, width] per token
    sign_column: torch.Tensor      # [rows] the number's first (sign) token, -1 = not credited in expectation
    sign_tokens: torch.Tensor      # [K] the tokens a number may begin with
    sign_advantages: torch.Tensor  # [rows, K] the advantage of each, by the sign it writes


def build_batch(items: list[Scored], slot: SlotVocabulary, belief_tokens: int, vocab_size: int, pad_id: int, device: torch.device, *, share_prompts: bool = True) -> CompletionBatch:
    """Tensors for `items`. With `share_prompts`, items with the same prompt ids share one prompt
    row (they must then be scored under the same adapter)."""
    prompt_rows: dict[tuple[int, ...], int] = {}
    prompt_index = []
    for position, item in enumerate(items):
        key = tuple(item.prompt_ids) if share_prompts else (position,)
        prompt_index.append(prompt_rows.setdefault(key, len(prompt_rows)))
    prompts = [None] * len(prompt_rows)
    for item, index in zip(items, prompt_index):
        prompts[index] = item.prompt_ids
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)

    rows, width = len(items), max(len(item.completion_ids) for item in items)
    targets = torch.full((rows, width), pad_id, dtype=torch.long)
    valid = torch.zeros((rows, width), dtype=torch.bool)
    trainable = torch.zeros((rows, width), dtype=torch.bool)
    belief = torch.zeros((rows, width), dtype=torch.bool)
    banned = torch.zeros((rows, width, vocab_size), dtype=torch.bool)
    for row, item in enumerate(items):
        size = len(item.completion_ids)
        targets[row, :size] = torch.tensor(item.completion_ids)
        valid[row, :size] = True
        trainable[row, :size] = torch.tensor(item.trainable, dtype=torch.bool)
        for column, (is_belief, allowed, excluded) in enumerate(slot_constraints(slot, belief_tokens, item.completion_ids)):
            belief[row, column] = is_belief
            if allowed is not None:
                banned[row, column] = True
                banned[row, column, allowed] = False
            else:
                banned[row, column, excluded] = True
    temperatures = torch.tensor([item.temperature if item.temperature > 0 else 1.0 for item in items]).view(rows, 1, 1)
    advantages = torch.tensor([item.advantage for item in items]).view(rows, 1).repeat(1, width)
    for row, item in enumerate(items):
        if item.belief_advantage is not None:
            advantages[row, belief[row]] = item.belief_advantage
    sign_ids, signs = slot.sign_tokens
    sign_column = torch.full((rows,), -1, dtype=torch.long)
    sign_advantages = torch.zeros((rows, len(sign_ids)))
    for row, item in enumerate(items):
        if item.flipped_advantage is None:
            continue
        column = number_start(slot, belief_tokens, item.completion_ids)
        if column >= len(item.completion_ids) or item.completion_ids[column] not in sign_ids or not item.trainable[column]:
            continue
        sampled = signs[sign_ids.index(item.completion_ids[column])]
        sign_column[row] = column
        sign_advantages[row] = torch.tensor([item.advantage if sign == sampled else item.flipped_advantage for sign in signs])
    tensors = (prompt_ids, prompt_mask, torch.tensor(prompt_index), targets, valid, trainable, belief, banned, temperatures, advantages,
               sign_column, torch.tensor(sign_ids, dtype=torch.long), sign_advantages)
    return CompletionBatch(*(tensor.to(device) for tensor in tensors))


def slot_constraints(slot: SlotVocabulary, belief_tokens: int, completion_ids: list[int]) -> list[tuple[bool, list[int] | None, list[int]]]:
    """For each completion token, as `DecisionSlotProcessor` saw it before choosing that token:
    (is a belief token, the only allowed tokens or None, the tokens banned from free text)."""
    state = SlotState(slot, belief_tokens)
    stop_ids, newline_ids = list(slot.stop_ids), sorted(slot.newline_ids)
    constraints = []
    for token in completion_ids:
        allowed = state.allowed()
        if allowed is None:
            excluded = stop_ids + (newline_ids if state.belief_tokens < MIN_BELIEF_TOKENS else [])
            constraints.append((True, None, excluded))
        else:
            constraints.append((False, allowed, []))
        state.advance(token)
    return constraints


def completion_logits(model, batch: CompletionBatch, adapter_names: list[str] | None = None) -> torch.Tensor:
    """Raw fp32 logits that predicted each completion token: [rows, width, vocab].

    Two passes: the distinct prompts once (keeping their key/value cache and only the last
    position's logits), then every completion on top of its prompt's cache. The gradient flows
    through the cache into the prompt pass, so it is exactly the gradient of one full forward per
    row, at a fraction of the cost when a group shares its prompt. `adapter_names` has one name per
    completion row; rows that share a prompt must share the name.
    """
    first_row = {}
    for row, prompt in enumerate(batch.prompt_index.tolist()):
        first_row.setdefault(prompt, row)
    prompt_names = {"adapter_names": [adapter_names[first_row[p]] for p in range(len(first_row))]} if adapter_names is not None else {}
    row_names = {"adapter_names": adapter_names} if adapter_names is not None else {}
    positions = (batch.prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_pass = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **prompt_names)
    # Rows take their prompt's logits and cache by a one-hot matmul, not index_select: on CPU the
    # latter's backward summed the rows of a shared prompt in a varying order (non-reproducible).
    selection = torch.nn.functional.one_hot(batch.prompt_index, batch.prompt_ids.shape[0])
    first = _select(prompt_pass.logits, selection).float()  # predicts each completion's first token
    if batch.targets.shape[1] == 1:
        return first
    cache = prompt_pass.past_key_values
    for layer in cache.layers:
        layer.keys, layer.values = _select(layer.keys, selection), _select(layer.values, selection)
    inputs = batch.targets[:, :-1]
    attention_mask = torch.cat([batch.prompt_mask[batch.prompt_index], batch.valid[:, :-1].long()], dim=1)
    start = batch.prompt_mask.sum(-1)[batch.prompt_index].unsqueeze(1)
    completion_pass = model(input_ids=inputs, attention_mask=attention_mask, position_ids=start + torch.arange(inputs.shape[1], device=inputs.device),
                            past_key_values=cache, use_cache=True, **row_names)
    return torch.cat([first, completion_pass.logits.float()], dim=1)


def _select(tensor: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """Rows of `tensor` picked by a one-hot [rows, prompts] matrix (exact: each row is 1 * x)."""
    return (selection.to(tensor.dtype) @ tensor.reshape(tensor.shape[0], -1)).reshape(selection.shape[0], *tensor.shape[1:])


def decoding_logits(logits: torch.Tensor, batch: CompletionBatch) -> torch.Tensor:
    """Logits of the distribution that was sampled: slot constraints applied, temperature-scaled.

    Banned tokens get a large finite logit rather than -inf: their probability is still exactly
    0 in fp32, and fused log-softmax kernels never meet inf - inf.
    """
    return logits.masked_fill(batch.banned, BANNED_LOGIT) / batch.temperatures


def token_logprobs(logits: torch.Tensor, batch: CompletionBatch) -> torch.Tensor:
    """log pi(token) of every completion token under the sampled decoding; 0 on padding."""
    logprobs = selective_log_softmax(decoding_logits(logits, batch), batch.targets)
    return logprobs.masked_fill(~batch.valid, 0.0)


def sign_logprobs(logits: torch.Tensor, batch: CompletionBatch) -> torch.Tensor:
    """log pi of every token a number may begin with, at each row's sign column, under the sampled
    decoding: [rows, K]; rows without a sign column read column 0 (their values are never used)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    column = batch.sign_column.clamp(min=0)
    scaled = logits[rows, column].masked_fill(batch.banned[rows, column], BANNED_LOGIT) / batch.temperatures[:, 0]
    return torch.log_softmax(scaled, dim=-1)[:, batch.sign_tokens]


@dataclass(frozen=True)
class LossTerms:
    loss: torch.Tensor
    k3: torch.Tensor          # [rows, width] per-token KL estimate, detached
    kl: float                 # mean k3 per trainable token


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, base_logprobs: torch.Tensor, batch: CompletionBatch, kl_coef: float, clip_epsilon: float, decision_weight: float, kl_clamp: float | None = None,
                sign: tuple[torch.Tensor, torch.Tensor] | None = None) -> LossTerms:
    """The clipped surrogate plus the k3 KL penalty, a weighted mean over the trainable tokens
    (belief tokens weigh 1, decision-number tokens `decision_weight`); `kl` is unweighted.
    With `kl_clamp` the penalty of each token is min(k3, kl_clamp), its log-ratio first held to
    +-20 so exp cannot overflow (verl's low_var_kl); `k3` and `kl` stay the uncapped estimate.
    With `sign` = (`sign_logprobs` now, at the first pass), the surrogate at each row's sign column
    is its expectation over the tokens a number may begin with, `sum_k pi_old(k) * clipped(rho_k * A_k)`,
    instead of the sampled token's (expected_sign: see the module docstring)."""
    mask = batch.trainable.float()
    tokens = mask.sum().clamp(min=1.0)
    weights = mask * torch.where(batch.belief, 1.0, decision_weight)
    surrogate = _clipped_surrogate(logprobs - old_logprobs, batch.advantages, clip_epsilon)
    if sign is not None:
        now, first = sign
        expected = (torch.exp(first) * _clipped_surrogate(now - first, batch.sign_advantages, clip_epsilon)).sum(-1)
        at_sign = torch.nn.functional.one_hot(batch.sign_column.clamp(min=0), surrogate.shape[1]).bool() & (batch.sign_column >= 0).unsqueeze(1)
        surrogate = torch.where(at_sign, expected.unsqueeze(1), surrogate)
    log_ratio_base = base_logprobs - logprobs
    k3 = torch.exp(log_ratio_base) - log_ratio_base - 1.0
    penalty = k3
    if kl_clamp is not None:
        held = log_ratio_base.clamp(-20.0, 20.0)
        penalty = (torch.exp(held) - held - 1.0).clamp(max=kl_clamp)
    loss = ((-surrogate + kl_coef * penalty) * weights).sum() / weights.sum().clamp(min=1e-12)
    k3 = k3.detach()
    return LossTerms(loss, k3, float((k3 * mask).sum() / tokens))


def _clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_epsilon: float) -> torch.Tensor:
    """PPO's `min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)`, elementwise."""
    ratio = torch.exp(log_ratio)
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantages)


@dataclass(frozen=True)
class UpdateStats:
    """What one agent's update did, averaged over its optimizer steps."""

    loss: float
    kl: float               # k3 per trainable token
    belief_kl: float | None  # k3 per belief token, in the last epoch
    grad_norm: float        # before clipping
    steps: int
    optimizer_state: dict   # the AdamW state after the update (to pass on with carry_optimizer)


def update_adapter(
    model,
    parameters: list[torch.nn.Parameter],
    groups: list[list[Scored]],
    *,
    slot: SlotVocabulary,
    belief_tokens: int,
    pad_id: int,
    device: torch.device,
    learning_rate: float,
    kl_coef: float,
    clip_epsilon: float,
    grad_clip: float,
    epochs: int,
    micro_batch: int,
    generator: torch.Generator,
    decision_weight: float,
    kl_clamp: float | None = None,
    optimizer_state: dict | None = None,
) -> UpdateStats:
    """Train the active adapter (whose tensors are `parameters`) on `groups` of completions.

    Whole groups, in a seeded shuffle, are packed into micro-batches of at most `micro_batch`
    completions (a larger group gets one to itself), so a group's members share their prompt
    pass. The micro-batches are fixed once and visited in a fresh seeded order in every epoch;
    one AdamW step per micro-batch, from `optimizer_state` (a previous update's) or fresh.
    """
    vocab_size = model.config.vocab_size
    chunks: list[list[Scored]] = []
    for index in torch.randperm(len(groups), generator=generator).tolist():
        if not chunks or len(chunks[-1]) + len(groups[index]) > micro_batch:
            chunks.append([])
        chunks[-1].extend(groups[index])

    def batch_of(index: int) -> CompletionBatch:
        return build_batch(chunks[index], slot, belief_tokens, vocab_size, pad_id, device)

    base_logprobs = []
    with torch.no_grad(), model.disable_adapter():
        for index in range(len(chunks)):
            batch = batch_of(index)
            base_logprobs.append(token_logprobs(completion_logits(model, batch), batch))
    old_logprobs: list[torch.Tensor | None] = [None] * len(chunks)
    old_sign: list[torch.Tensor | None] = [None] * len(chunks)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)  # the moments and step count; the rate stays this call's
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
    losses, kls, norms, belief_kls = [], [], [], []
    model.train()
    try:
        for epoch in range(epochs):
            visit = range(len(chunks)) if epoch == 0 else torch.randperm(len(chunks), generator=generator).tolist()
            for index in visit:
                batch = batch_of(index)
                logits = completion_logits(model, batch)
                logprobs = token_logprobs(logits, batch)
                signs = sign_logprobs(logits, batch) if bool((batch.sign_column >= 0).any()) else None
                if old_logprobs[index] is None:
                    old_logprobs[index] = logprobs.detach()
                    old_sign[index] = signs.detach() if signs is not None else None
                sign = (signs, old_sign[index]) if signs is not None else None
                terms = policy_loss(logprobs, old_logprobs[index], base_logprobs[index], batch, kl_coef, clip_epsilon, decision_weight, kl_clamp, sign)
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                norms.append(float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip)))
                optimizer.step()
                losses.append(float(terms.loss.detach()))
                kls.append(terms.kl)
                if epoch == epochs - 1:
                    belief_kls.append(_masked_mean(terms.k3, batch.belief & batch.trainable))
    finally:
        model.eval()
    kept = [value for value in belief_kls if value is not None]
    return UpdateStats(
        loss=sum(losses) / len(losses), kl=sum(kls) / len(kls),
        belief_kl=sum(kept) / len(kept) if kept else None,
        grad_norm=sum(norms) / len(norms), steps=len(losses), optimizer_state=optimizer.state_dict(),
    )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    count = int(mask.sum())
    return float((values * mask).sum() / count) if count else None
