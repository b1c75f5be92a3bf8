"""Automated prompt optimisation (APO): every agent's strategy prompt, rewritten from its own pay.

For a frozen model (an API model, or any model with `training.method = "apo"`) what an agent can
learn is the instruction that shapes its belief: its **strategy prompt**, the last line of its
user message (`agents/prompts.py`; `{asset}` is its one placeholder). The factor block, the news
and the memory are data: never optimised, never shown to the rewrite as something to copy.

Every training phase, for each agent (docs/training.md has the algorithm and its anchors):

1. **Critique.** The optimizer model reads a sample of the agent's recent steps (what it saw,
   its belief, its decision and its pay; the best- and worst-paid among them) and writes what the
   prompt makes the agent get wrong: a textual gradient (ProTeGi).
2. **Propose.** It writes `candidates` rewrites of each prompt in the agent's beam.
3. **Guard.** A rewrite must keep `{asset}`, stay within `max_chars`, and hold no digit (so no
   factor value, date or price can leak in); the asset's own name is put back as `{asset}`. A
   rewrite that breaks a rule, or an empty answer, is rejected and counted; it never stops a run.
4. **Replay.** Every prompt in the beam and every valid rewrite answers the agent's recent states
   again: the same prompts with that strategy line, the same seeds, the same adapters. Its score is
   what its decisions would have paid at the returns those states realised (the exact expected
   decision E[d] where the backend gives the distribution, else the sampled decision), under the
   market's own payoff rule; nothing after those states is read.
5. **Select.** The states are split once per phase: the critique sees one part, the other is held
   back. The beam becomes the `beam` best prompts by their pay on the shown part; the best of them
   that is not the current prompt is **adopted** only if it also beats the current prompt on the
   held-back part. Otherwise the current prompt stays.

Everything is seeded from the phase's seed, so a phase re-run after a crash writes the same rows.
"""

from __future__ import annotations

import random
import re
import statistics
import time
from dataclasses import dataclass, field

from agents.prompts import ASSET_PLACEHOLDER, DEFAULT_STRATEGY, render_strategy
from core.seeding import child_seed
from market.payoff import reward as payoff
from training.config import TrainingConfig

OPTIMIZER_SYSTEM = "You improve the instructions given to a stock-market investor. You answer briefly."
DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class ReplayState:
    """One past decision of an agent, as the replay and the critique need it."""

    step: int
    asset: str
    prompt: str             # the chat prompt as decided, with the strategy line of `strategy`
    strategy: str           # the strategy prompt that produced it
    seen: str               # the factor lines the agent read (for the critique)
    belief: str
    decision: float
    reward: float
    realised_return: float
    temperature: float
    risk_preference: float
    recent_variance: float


@dataclass
class PromptRow:
    phase: int
    step: int
    agent_id: int
    version: int
    parent_version: int | None
    text: str
    replay_score: float | None = None
    heldout_score: float | None = None
    in_beam: bool = False
    adopted: bool = False
    reason: str = ""


@dataclass
class PhaseResult:
    prompts: list[PromptRow] = field(default_factory=list)
    critiques: list[dict] = field(default_factory=list)
    usage: list[dict] = field(default_factory=list)
    current: dict[int, tuple[int, str]] = field(default_factory=dict)  # agent -> (version, text) after the phase
    replay_gain: dict[int, float] = field(default_factory=dict)  # agent -> replay pay of its prompt after the phase less before it


def check_candidate(text: str, assets: list[str], max_chars: int) -> tuple[str | None, str]:
    """(the cleaned strategy prompt, "") or (None, why it is rejected)."""
    lines = [line.strip().strip('"').strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return None, "rejected: empty answer"
    cleaned = lines[0].removeprefix("Instruction:").strip().strip('"').strip()
    for asset in assets:
        cleaned = cleaned.replace(asset, ASSET_PLACEHOLDER)
    if ASSET_PLACEHOLDER not in cleaned:
        return None, "rejected: no {asset} placeholder"
    if len(cleaned) > max_chars:
        return None, f"rejected: longer than {max_chars} characters"
    if DIGIT.search(cleaned):
        return None, "rejected: holds a digit (a value, date or price could leak)"
    if "{" in cleaned.replace(ASSET_PLACEHOLDER, ""):
        return None, "rejected: a placeholder other than {asset}"
    return cleaned, ""


def critique_messages(strategy: str, examples: list[ReplayState]) -> list[dict]:
    lines = [f'An investor follows this instruction: "{strategy}"', "Some of its recent days (what it read, its belief, its decision from -10 to 10, and what it paid):"]
    for state in examples:
        lines.append(f"- read: {state.seen} | belief: {state.belief[:160]} | decision {state.decision:+.0f} | paid {state.reward:+.4f}")
    lines.append("In two sentences, say what the instruction makes the investor get wrong.")
    return [{"role": "system", "content": OPTIMIZER_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def propose_messages(strategy: str, critique: str) -> list[dict]:
    return [{"role": "system", "content": OPTIMIZER_SYSTEM}, {"role": "user", "content": (
        f'Instruction: "{strategy}"\nWhat goes wrong: {critique}\nWrite a better instruction for the investor, in one sentence. '
        f"It must contain {ASSET_PLACEHOLDER} where the stock's name goes, and no numbers. Answer with the instruction only.")}]


def pick_examples(states: list[ReplayState], count: int) -> list[ReplayState]:
    """The best- and worst-paid states, then the most recent, `count` in all, in time order."""
    by_pay = sorted(states, key=lambda state: state.reward)
    chosen = {id(by_pay[0]): by_pay[0], id(by_pay[-1]): by_pay[-1]}
    for state in reversed(states):
        if len(chosen) >= count:
            break
        chosen.setdefault(id(state), state)
    return sorted(chosen.values(), key=lambda state: (state.step, state.asset))


def adopted_strategies(rows: list[dict], phase: int) -> dict[int, tuple[int, str]]:
    """Each agent's strategy prompt (version, text) as APO phase `phase` left it: its last adopted
    row of the `prompts` table up to that phase. Agents without a row are left out."""
    adopted = sorted((row for row in rows if row["adopted"] and row["phase"] <= phase), key=lambda row: (row["phase"], row["version"]))
    return {int(row["agent_id"]): (int(row["version"]), row["text"]) for row in adopted}


class PromptOptimizer:
    """Owns every agent's strategy prompts (current, beam, history) and runs the APO phases.

    `llm` answers the replays (the agents' own model, adapters untouched); `optimizer` writes the
    critiques and rewrites (`complete`): the agents' model by default, or another one."""

    def __init__(self, llm, optimizer, config: TrainingConfig, agent_ids: list[int], assets: list[str], *, reward: str, risk_aversion: float,
                 belief_tokens: int, max_prompt_tokens: int, batch_size: int):
        self.llm, self.optimizer, self.config, self.apo = llm, optimizer, config, config.apo
        self.agent_ids, self.assets = list(agent_ids), list(assets)
        self.reward, self.risk_aversion = reward, risk_aversion
        self.belief_tokens, self.max_prompt_tokens, self.batch_size = belief_tokens, max_prompt_tokens, batch_size
        self.texts = {agent: {0: DEFAULT_STRATEGY} for agent in self.agent_ids}   # every version's text
        self.current = {agent: 0 for agent in self.agent_ids}                     # adopted version
        self.beams = {agent: [0] for agent in self.agent_ids}                     # versions kept between phases

    def initial_rows(self) -> list[PromptRow]:
        return [PromptRow(0, -1, agent, 0, None, DEFAULT_STRATEGY, in_beam=True, adopted=True, reason="initial") for agent in self.agent_ids]

    def restore(self, rows: list[dict]) -> None:
        """The state after the phases in `rows` (the `prompts` table), as the phases left it."""
        last_phase = max((row["phase"] for row in rows), default=0)
        current = adopted_strategies(rows, last_phase)
        for agent in self.agent_ids:
            mine = sorted((row for row in rows if row["agent_id"] == agent), key=lambda row: (row["phase"], row["version"]))
            self.texts[agent] = {int(row["version"]): row["text"] for row in mine} or {0: DEFAULT_STRATEGY}
            self.current[agent] = current[agent][0] if agent in current else 0
            beam = [int(row["version"]) for row in mine if row["in_beam"] and row["phase"] == last_phase]
            self.beams[agent] = beam or [self.current[agent]]

    def strategy(self, agent: int) -> tuple[int, str]:
        version = self.current[agent]
        return version, self.texts[agent][version]

    def text_of(self, agent: int, version: int) -> str:
        return self.texts[agent].get(version, DEFAULT_STRATEGY)

    # --- one phase --------------------------------------------------------------------------

    def run_phase(self, phase: int, step: int, states: dict[int, list[ReplayState]], seed: int) -> PhaseResult:
        result = PhaseResult()
        split = {agent: self._split(agent_states, child_seed(seed, "split", agent)) for agent, agent_states in states.items() if len(agent_states) >= 2}
        # 1. critiques: one per (agent, beam prompt), in one batch
        jobs = [(agent, version) for agent in self.agent_ids if agent in split for version in self.beams[agent]]
        started = time.perf_counter()
        critiques = self.optimizer.complete([critique_messages(self.text_of(agent, version), pick_examples(split[agent][0], self.apo.examples))
                                             for agent, version in jobs], max_tokens=self.apo.critique_tokens, temperature=self.apo.temperature,
                                            seed=child_seed(seed, "critique")) if jobs else []
        self._usage(result, phase, "critique", [agent for agent, _ in jobs], critiques, time.perf_counter() - started)
        for (agent, version), (text, prompt_tokens, completion_tokens) in zip(jobs, critiques, strict=True):
            result.critiques.append({"phase": phase, "agent_id": agent, "version": version, "text": text,
                                     "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
        # 2. rewrites: `candidates` per critique, in one batch
        asks = [(agent, version, critique[0]) for (agent, version), critique in zip(jobs, critiques, strict=True) for _ in range(self.apo.candidates)]
        started = time.perf_counter()
        answers = self.optimizer.complete([propose_messages(self.text_of(agent, version), critique) for agent, version, critique in asks],
                                          max_tokens=self.apo.prompt_tokens, temperature=self.apo.temperature, seed=child_seed(seed, "propose")) if asks else []
        self._usage(result, phase, "propose", [agent for agent, _, _ in asks], answers, time.perf_counter() - started)
        candidates: dict[int, list[PromptRow]] = {agent: [] for agent in split}
        for (agent, parent, _), (text, _, _) in zip(asks, answers, strict=True):
            cleaned, reason = check_candidate(text, self.assets, self.apo.max_chars)
            version = max(self.texts[agent]) + 1
            self.texts[agent][version] = cleaned if cleaned is not None else (text or "").strip()[:self.apo.max_chars]
            row = PromptRow(phase, step, agent, version, parent, self.texts[agent][version], reason=reason)
            if cleaned is not None and any(other.text == cleaned for other in candidates[agent]):
                row.reason = "rejected: the same as another rewrite"
            elif cleaned is not None and cleaned in (self.text_of(agent, kept) for kept in self.beams[agent]):
                row.reason = "rejected: the same as a beam prompt"
            result.prompts.append(row)
            if not row.reason:
                candidates[agent].append(row)
        # 3. replay every beam prompt and valid rewrite on the agent's states; 4. select
        for agent in self.agent_ids:
            if agent not in split:
                continue
            shown, heldout = split[agent]
            beam_rows = [PromptRow(phase, step, agent, version, None, self.text_of(agent, version), reason="beam") for version in self.beams[agent]]
            scored = beam_rows + candidates[agent]
            started = time.perf_counter()
            replays = [self._replay(agent, row.text, shown + heldout, child_seed(seed, "replay", agent)) for row in scored]
            self._usage(result, phase, "replay", [agent], [(None, sum(r[1] for r in replays), sum(r[2] for r in replays))], time.perf_counter() - started)
            for row, (pays, _, _) in zip(scored, replays, strict=True):
                row.replay_score = statistics.fmean(pays[: len(shown)])
                row.heldout_score = statistics.fmean(pays[len(shown):])
            before = next(row.replay_score for row in beam_rows if row.version == self.current[agent])
            self._select(agent, scored)
            result.replay_gain[agent] = next(row.replay_score for row in scored if row.version == self.current[agent]) - before
            result.prompts += beam_rows
        for agent in self.agent_ids:
            result.current[agent] = self.strategy(agent)
        return result

    def _split(self, states: list[ReplayState], seed: int) -> tuple[list[ReplayState], list[ReplayState]]:
        """(shown to the critique, held back); each at least one state."""
        order = sorted(states, key=lambda state: (state.step, state.asset))
        random.Random(seed).shuffle(order)
        held = min(max(round(len(order) * self.apo.holdout), 1), len(order) - 1)
        return order[held:], order[:held]

    def _replay(self, agent: int, strategy: str, states: list[ReplayState], seed: int) -> tuple[list[float], int, int]:
        """What `strategy`'s decisions would have paid on `states` at their realised returns; and the tokens spent."""
        prompts = [state.prompt.replace(render_strategy(state.strategy, state.asset), render_strategy(strategy, state.asset)) for state in states]
        agents = [agent] * len(states) if getattr(self.llm, "routes_agents", False) else None
        completions = self.llm.generate(prompts, [state.temperature for state in states], agents, belief_tokens=self.belief_tokens,
                                        max_prompt_tokens=self.max_prompt_tokens, batch_size=self.batch_size, seed=seed)
        pays = []
        for state, completion in zip(states, completions, strict=True):
            decision = completion.expected_decision if completion.expected_decision is not None else completion.decision_depth
            pays.append(payoff(self.reward, state.realised_return, decision, risk_preference=state.risk_preference,
                               risk_aversion=self.risk_aversion, recent_variance=state.recent_variance))
        return pays, sum(c.prompt_token_count for c in completions), sum(c.completion_token_count for c in completions)

    def _select(self, agent: int, scored: list[PromptRow]) -> None:
        current = next(row for row in scored if row.version == self.current[agent] and row.reason == "beam")
        ranked = sorted(scored, key=lambda row: (-row.replay_score, row.version))
        beam = ranked[: self.apo.beam]
        for row in beam:
            row.in_beam = True
        challenger = next((row for row in ranked if row.version != current.version), None)
        for row in scored:
            if row is challenger:
                if row.heldout_score > current.heldout_score:
                    row.adopted, row.reason = True, f"adopted: held-back pay {row.heldout_score:+.5f} > current {current.heldout_score:+.5f}"
                else:
                    row.reason = f"kept out: held-back pay {row.heldout_score:+.5f} <= current {current.heldout_score:+.5f}"
            elif row.reason != "beam":
                row.reason = "kept out: not the best by replay"
        if challenger is not None and challenger.adopted:
            self.current[agent] = challenger.version
            current.reason = "beam: replaced"
        else:
            current.adopted, current.reason = True, "beam: kept as current"
        self.beams[agent] = sorted({row.version for row in beam} | {self.current[agent]})

    def _usage(self, result: PhaseResult, phase: int, purpose: str, agents: list[int], answers, seconds: float) -> None:
        """Tokens per agent and purpose; the batch's seconds shared equally among its rows."""
        per_row = seconds / max(len(answers), 1)
        totals: dict[int, list[float]] = {}
        for agent, (_, prompt_tokens, completion_tokens) in zip(agents, answers, strict=True):
            entry = totals.setdefault(agent, [0, 0, 0.0])
            entry[0] += prompt_tokens
            entry[1] += completion_tokens
            entry[2] += per_row
        for agent, (prompt_tokens, completion_tokens, share) in totals.items():
            result.usage.append({"phase": phase, "agent_id": agent, "purpose": purpose, "prompt_tokens": int(prompt_tokens),
                                 "completion_tokens": int(completion_tokens), "seconds": share})
