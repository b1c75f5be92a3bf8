"""The hindsight update: every possible decision credited with its known pay, each belief with its value.

Once a day's return is realised, the pay of every decision the slot can write is known
(training/hindsight.py), and the decision's whole distribution π(d | prompt, belief) comes from one
teacher-forced pass (agents/scoring.py). So nothing about the decision needs to be sampled:

1. **Decision: the exact expected pay, with a trust region.** For each (state, belief) the loss
   is `-Σ_d π(d) Q(d) + trust · KL(π || π_old)`: the expected standardised pay of the whole
   decision distribution, every decision weighted by its known pay (no sampled decision, no
   baseline), leashed to π_old, the policy before the phase. The KL term bounds how far one
   phase moves (its optimum is the mirror-descent step π_old · exp(Q / trust), normalised), and
   stopped a probe's plain gradient from running one seed to a single sign; a mirror-descent
   cross-entropy toward that optimum learned more slowly in the same probes (docs/experiments.md).
2. **Belief credit.** A belief is worth what the decisions it leads to are expected to pay,
   `V(b) = Σ_d π_old(d | state, b) Q(d)`, computed exactly, so decision sampling noise never
   enters a belief's credit. Each state gets G beliefs (`beliefs_per_state`: the one the agent
   wrote and G - 1 fresh ones, sampled with its adapter), and a belief's tokens are credited with
   `V(b_i) - mean_{j != i} V(b_j)` by a PPO-clipped policy gradient, only where the belief was
   sampled by the adapter being trained (an older adapter's belief is a baseline, not a sample).
   Within a micro-batch the returns are measured against the micro-batch's own mean (the slope of
   Q shifted by its mean over the micro-batch's rows): a handful of states whose returns happen to
   lean one way would otherwise push every decision that way, and with Adam's normalised steps
   that push is a random walk of the sign (a probe collapsed to all-short; docs/experiments.md).
3. **Leash.** A k3 KL estimate from the belief tokens to the base model (`kl_coef`) keeps the
   beliefs the base model's kind of text; the decision's leash is the trust term of 1.
4. **Early stopping, then a significance test.** A share of the phase's states is held back
   (`holdout`: each agent's latest states, training/phase.py). After each epoch an agent's exact
   expected pay on them, E_π[Q], is compared with the best so far, the starting adapter's at
   first: a higher one is kept, and an agent stops after three epochs in a row without one. At
   the end the best epoch is adopted only if its per-state gain over the **base model** on the
   held-back states is `significance` standard errors or more (a paired t); otherwise the agent
   keeps the adapter it began the phase with. An agent that reads nothing but noise still finds
   epochs that beat its start on a few held-back states by chance, and adopting them moved its
   out-of-sample behaviour as much as learning moves a real signal's: the test refuses most of
   them. It tests the agent's whole learning, not the phase's step: an agent that has learned
   need not prove each further step on its own, since a step is a fraction of the whole gain and,
   on a few dozen held-back states, rarely significant alone (docs/experiments.md, 2026-12-05).

All agents train at once: each micro-batch holds every agent's k-th micro-batch of states, one
forward/backward over their rows (each row routed to its agent's adapter), then per-agent
clipping and per-agent AdamW (training/optimizer.py). Each agent's loss is its own rows' mean, so
its gradient is what training it alone on the same micro-batches gives: the result equals
agent-by-agent training from the same samples and seeds up to float rounding (batch padding and
summation order differ), which `tests/test_training.py` checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.decision_tree import DECISION_VALUES
from agents.scoring import Trunk, pack, read
from training.optimizer import AgentAdam

PATIENCE = 2  # epochs without a held-back improvement an agent may train on before it stops


@dataclass
class TrainRow:
    """One (state, belief) an agent learns from."""

    key: int                       # the row's id within the phase
    agent: int                     # the agent's adapter index
    state: int                     # the state (prompt and day) within the agent's phase
    prompt_ids: list[int]
    belief_ids: list[int]
    marker_ids: list[int]
    temperature: float             # of the decoding the belief was (or would be) sampled with
    pay: torch.Tensor              # [201] Q(d) of the state's day
    slope: float                   # Q's slope in d: the day's standardised excess return / 10 (training/hindsight.py)
    on_policy: bool                # sampled by the adapter being trained: its belief tokens may learn
    old_value_logprobs: torch.Tensor | None = None  # [201] log π_old(d), the policy before the phase
    value: float = 0.0                               # V(b) under π_old
    advantage: float = 0.0                           # V(b) - mean of the state's other beliefs' V
    old_belief_logprobs: torch.Tensor | None = None  # [belief tokens] under π_old
    base_belief_logprobs: torch.Tensor | None = None # [belief tokens] under the base model


@dataclass(frozen=True)
class AgentStats:
    """What one agent's update did."""

    epochs: int                  # epochs trained (the kept adapter is the best of them, or the start)
    kept_epoch: int              # 0 = the starting adapter was kept
    loss: float | None
    decision_kl: float | None    # KL(π || π_old) of the decision at the last trained epoch, per row
    belief_kl: float | None      # k3 per belief token at the last trained epoch
    grad_norm: float | None      # mean before clipping
    heldout_before: float | None # mean E_π[Q] on the held-back states, before and after
    heldout_after: float | None
    heldout_t: float | None      # paired t of the best epoch's held-back gain over the base model (None: no epoch beat the start)
    belief_advantage_std: float | None


def leave_one_out(values: list[float]) -> list[float]:
    """`V_i - mean of the others' V`; a group of one has no baseline, so 0."""
    if len(values) < 2:
        return [0.0] * len(values)
    total = sum(values)
    return [value - (total - value) / (len(values) - 1) for value in values]


def _score(trunk: Trunk, rows: list[TrainRow], agents: list[int] | None, *, beliefs_needed: bool):
    packed = pack(trunk.llm, [row.prompt_ids for row in rows], [row.belief_ids for row in rows], [row.marker_ids for row in rows])
    hidden = trunk.run([row.key for row in rows], packed, agents)
    return read(trunk.llm, hidden, packed, torch.tensor([row.temperature for row in rows]), beliefs_needed=beliefs_needed)


@torch.no_grad()
def prepare(trunk: Trunk, rows: list[TrainRow], config, chunk_rows: int) -> None:
    """Store each row's trunk, then fill in its target, value, advantage and reference log-probs
    under the adapters as they are."""
    llm, kl = trunk.llm, config.kl_coef > 0
    for start in range(0, len(rows), chunk_rows):
        chunk = rows[start:start + chunk_rows]
        trunk.add([row.key for row in chunk], pack(llm, [row.prompt_ids for row in chunk], [row.belief_ids for row in chunk], [row.marker_ids for row in chunk]))
        current = _score(trunk, chunk, [row.agent for row in chunk], beliefs_needed=True)
        base = _score(trunk, chunk, None, beliefs_needed=True) if kl else None
        values = llm.tree.value_logprobs(current.outcome_logprobs).cpu()
        for position, row in enumerate(chunk):
            size = len(row.belief_ids)
            row.old_value_logprobs = values[position]
            row.value = float((values[position].exp() * row.pay).sum())
            row.old_belief_logprobs = current.belief_logprobs[position, :size].cpu()
            row.base_belief_logprobs = base.belief_logprobs[position, :size].cpu() if kl else None
    by_state: dict[tuple[int, int], list[TrainRow]] = {}
    for row in rows:
        by_state.setdefault((row.agent, row.state), []).append(row)
    for group in by_state.values():
        for row, advantage in zip(group, leave_one_out([row.value for row in group])):
            row.advantage = advantage


@dataclass(frozen=True)
class RowLosses:
    total: torch.Tensor         # [rows] what each row adds to its agent's loss
    decision_kl: torch.Tensor   # [rows] KL(π || π_old), detached
    belief_k3: torch.Tensor     # [rows] mean k3 over the belief tokens (0 without a leash), detached
    leashed: torch.Tensor       # [rows] bool: the row has a KL leash term


def row_losses(trunk: Trunk, rows: list[TrainRow], config, centre: dict[int, float]) -> RowLosses:
    """The decision's expected pay and trust term, belief credit and the belief leash, per row;
    `centre[agent]` is the mean slope of the agent's rows in the micro-batch."""
    device = trunk.llm.device
    belief_terms = config.kl_coef > 0 or any(row.on_policy and row.advantage != 0.0 for row in rows)
    scored = _score(trunk, rows, [row.agent for row in rows], beliefs_needed=belief_terms)
    log_values = trunk.llm.tree.value_logprobs(scored.outcome_logprobs)
    probabilities = log_values.exp()
    shift = torch.tensor([centre[row.agent] for row in rows])[:, None] * torch.tensor(DECISION_VALUES)[None, :]
    pay = (torch.stack([row.pay for row in rows]) - shift).to(device)
    old = torch.stack([row.old_value_logprobs for row in rows]).to(device)
    kl_to_old = (probabilities * (log_values - old)).sum(-1)
    total = -(probabilities * pay).sum(-1) + config.trust * kl_to_old
    decision_kl = kl_to_old.detach()
    zeros = torch.zeros(len(rows), device=device)
    belief_k3, leashed = zeros, torch.zeros(len(rows), dtype=torch.bool)
    if belief_terms:
        mask = scored.belief_mask.float()
        width = mask.shape[1]
        old_beliefs = _padded([row.old_belief_logprobs for row in rows], width).to(device)
        log_ratio = scored.belief_logprobs - old_beliefs
        advantage = torch.tensor([row.advantage if row.on_policy else 0.0 for row in rows], device=device)[:, None]
        ratio = torch.exp(log_ratio)
        surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - config.clip_epsilon, 1 + config.clip_epsilon) * advantage)
        tokens = mask.sum(-1).clamp(min=1.0)
        total = total - config.belief_coef * (surrogate * mask).sum(-1) / tokens
        if config.kl_coef > 0:
            leashed = torch.tensor([row.on_policy for row in rows])
            base = _padded([row.base_belief_logprobs for row in rows], width).to(device)
            to_base = base - scored.belief_logprobs
            k3 = (torch.exp(to_base) - to_base - 1.0) * mask
            per_row = k3.sum(-1) / tokens * leashed.to(device)
            total = total + config.kl_coef * per_row
            belief_k3 = per_row.detach()
    return RowLosses(total, decision_kl, belief_k3, leashed)


def _padded(tensors: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros((len(tensors), width))
    for row, tensor in enumerate(tensors):
        out[row, : len(tensor)] = tensor
    return out


@torch.no_grad()
def heldout_pay(trunk: Trunk, rows: list[TrainRow], chunk_rows: int, adapters: bool = True) -> dict[int, torch.Tensor]:
    """E_π[Q] of each held-back state under the current adapters (its rows' mean), or under the
    base model with `adapters` false, per agent: agent -> [its held-back states, in a fixed order]."""
    values: dict[tuple[int, int], list[float]] = {}
    for start in range(0, len(rows), chunk_rows):
        chunk = rows[start:start + chunk_rows]
        scored = _score(trunk, chunk, [row.agent for row in chunk] if adapters else None, beliefs_needed=False)
        expected = (trunk.llm.tree.value_logprobs(scored.outcome_logprobs).exp().cpu() * torch.stack([row.pay for row in chunk])).sum(-1)
        for row, value in zip(chunk, expected.tolist()):
            values.setdefault((row.agent, row.state), []).append(value)
    per_agent: dict[int, list[float]] = {}
    for (agent, _), state_values in sorted(values.items()):
        per_agent.setdefault(agent, []).append(sum(state_values) / len(state_values))
    return {agent: torch.tensor(state_values) for agent, state_values in per_agent.items()}


def improves(now: torch.Tensor, best: torch.Tensor) -> bool:
    """Whether held-back per-state pay `now` beats `best` on average."""
    return bool((now - best).mean() > 0)


def gain_t(now: torch.Tensor, start: torch.Tensor) -> float | None:
    """The paired t statistic of the held-back per-state gain `now - start`: its mean over its
    standard error. +inf for a gain with no spread over two or more states, -inf for a loss with
    none; None for a single held-back state, which has no standard error."""
    gain = (now - start).double()
    if len(gain) < 2:
        return None
    mean = float(gain.mean())
    spread = float(gain.std())
    if spread == 0.0:
        return float("inf") if mean > 0 else float("-inf") if mean < 0 else 0.0
    return mean / (spread / len(gain) ** 0.5)


@dataclass
class _Progress:
    """One agent's early-stopping state."""

    best: torch.Tensor | None       # held-back per-state pay of the kept adapter
    kept_epoch: int
    snapshot: dict
    start: dict                     # the adapter the phase began with
    misses: int = 0                 # epochs in a row without a kept improvement
    trained: int = 0
    t: float | None = None          # gain_t of the best epoch over the base model (before the significance test)


def update_agents(trunk: Trunk, train: dict[int, list[list[TrainRow]]], heldout: list[TrainRow], config, *, agents: int, generators: dict[int, torch.Generator], chunk_rows: int) -> dict[int, AgentStats]:
    """Train every agent in `train` (agent -> its states, each a list of rows) jointly; see the
    module docstring. `generators` shuffles each agent's states; `chunk_rows` bounds the rows of
    one forward/backward (a micro-batch bigger than that accumulates gradients over chunks).

    Early stopping, per agent: after each epoch its held-back pay is compared with the best kept
    so far (`improves`); an agent stops after `PATIENCE + 1` epochs in a row without improvement
    and keeps its best epoch (epoch 0 = its starting adapter), if that passes the significance
    test against the base model's held-back pay. An agent with no held-back state trains every
    epoch."""
    llm = trunk.llm
    adapters, device = llm.adapters, llm.device
    optimizer = AgentAdam(adapters.parameters(), agents, config.learning_rate)
    learning = sorted(agent for agent, states in train.items() if states)
    before = heldout_pay(trunk, heldout, chunk_rows) if heldout else {}
    # an identity adapter is routed to the base model (agents/lora.py), so where every held-back
    # agent's adapter is the identity (a first phase) `before` is already the base model's pay
    base = before if bool(adapters.identity()[list(before)].all()) else heldout_pay(trunk, heldout, chunk_rows, adapters=False)
    progress = {agent: _Progress(before.get(agent), 0, start, start) for agent in learning for start in [adapters.agent_state(agent)]}
    running = list(learning)
    logs: dict[int, dict[str, list[float]]] = {agent: {"loss": [], "decision_kl": [], "belief_kl": [], "grad_norm": []} for agent in learning}
    llm.model.train()
    try:
        for epoch in range(1, config.epochs + 1):
            if not running:
                break
            batches = {agent: _micro_batches(train[agent], config.micro_batch, generators[agent]) for agent in running}
            for agent in running:
                for key in ("loss", "decision_kl", "belief_kl"):
                    logs[agent][key] = []
            for step in range(max(len(batch) for batch in batches.values())):
                stepping = [agent for agent in running if step < len(batches[agent])]
                rows = [row for agent in stepping for state in batches[agent][step] for row in state]
                weight = {agent: 1.0 / sum(len(state) for state in batches[agent][step]) for agent in stepping}
                centre = {agent: sum(row.slope for state in batches[agent][step] for row in state) * weight[agent] for agent in stepping}
                optimizer.zero_grad()
                for chunk in _chunks(rows, chunk_rows):
                    losses = row_losses(trunk, chunk, config, centre)
                    weights = torch.tensor([weight[row.agent] for row in chunk], device=device)
                    (losses.total * weights).sum().backward()
                    for position, row in enumerate(chunk):
                        logs[row.agent]["loss"].append(float(losses.total[position].detach()))
                        logs[row.agent]["decision_kl"].append(float(losses.decision_kl[position]))
                        if losses.leashed[position]:
                            logs[row.agent]["belief_kl"].append(float(losses.belief_k3[position]))
                norms = optimizer.clip(config.grad_clip)
                active = torch.zeros(agents, dtype=torch.bool)
                active[stepping] = True
                optimizer.step(active)
                for agent in stepping:
                    logs[agent]["grad_norm"].append(float(norms[agent]))
            now = heldout_pay(trunk, heldout, chunk_rows) if heldout else {}
            still = []
            for agent in running:
                state = progress[agent]
                state.trained = epoch
                if state.best is None:  # nothing held back: every epoch is kept
                    state.kept_epoch, state.snapshot = epoch, None
                    still.append(agent)
                elif improves(now[agent], state.best):
                    state.best, state.kept_epoch, state.snapshot, state.misses = now[agent], epoch, adapters.agent_state(agent), 0
                    still.append(agent)
                else:
                    state.misses += 1
                    if state.misses <= PATIENCE:
                        still.append(agent)
            running = still
    finally:
        llm.model.eval()
    stats = {}
    for agent in learning:
        state, log = progress[agent], logs[agent]
        if state.best is not None and state.kept_epoch > 0:
            state.t = gain_t(state.best, base[agent])
            if config.significance > 0 and (state.t is None or state.t < config.significance):
                # not a gain over the base model the held-back states can tell from noise (or too few of them to tell): keep the start
                state.best, state.kept_epoch, state.snapshot = before[agent], 0, state.start
        if state.snapshot is not None and state.kept_epoch < state.trained:
            adapters.set_agent_state(agent, state.snapshot)
        advantages = [row.advantage for state_rows in train[agent] for row in state_rows if row.on_policy]
        stats[agent] = AgentStats(
            epochs=state.trained, kept_epoch=state.kept_epoch, loss=_mean(log["loss"]), decision_kl=_mean(log["decision_kl"]),
            belief_kl=_mean(log["belief_kl"]), grad_norm=_mean(log["grad_norm"]),
            heldout_before=float(before[agent].mean()) if agent in before else None,
            heldout_after=float(state.best.mean()) if state.best is not None else None, heldout_t=state.t,
            belief_advantage_std=float(torch.tensor(advantages).std()) if config.beliefs_per_state > 1 and len(advantages) > 1 else None,
        )
    return stats


def _micro_batches(states: list[list[TrainRow]], size: int, generator: torch.Generator) -> list[list[list[TrainRow]]]:
    order = torch.randperm(len(states), generator=generator).tolist()
    return [[states[index] for index in order[start:start + size]] for start in range(0, len(order), size)]


def _chunks(rows: list[TrainRow], size: int):
    """Consecutive slices of at most `size` rows that never split one state's rows (they share a prompt pass)."""
    chunk: list[TrainRow] = []
    for row in rows:
        if chunk and len(chunk) >= size and (row.agent, row.state) != (chunk[-1].agent, chunk[-1].state):
            yield chunk
            chunk = []
        chunk.append(row)
    if chunk:
        yield chunk


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


