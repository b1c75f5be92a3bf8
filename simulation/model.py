"""The Mesa model: one `step()` is one trading day, told as the event list of DESIGN.md.

    events(t) -> open(t) -> factors(t) -> deliberate(t) -> clear(t) -> settle(t+1) -> commit
    and after every `training.every` steps: a training phase, then an AED measurement.

All agents deliberate in one batched pass through the shared model (each row with its own LoRA
adapter), so there is no per-agent scheduler: Mesa's `AgentSet` holds the agents (in agent-id
order) and the model asks each for its observation and hands each its payoff. The model is built
whole: its trainer and AED meter (None when the scenario turns them off) and its observer are
given to the constructor. Mesa's `rng` is re-seeded at the start of every step from a child of the
master seed keyed by the step, so every random draw of step t is the same in a resumed run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import mesa
import numpy as np
import pandas as pd

from agents.investor import AgentSpec, InvestorAgent, Observation
from agents.llm import LLM, Completion
from agents.prompts import Memory, Persona
from core.seeding import child_seed
from core.store import RunStore
from market.data import MarketData
from market.factor_store import FactorStore
from market.payoff import recent_variance, reward
from market.price import Clearing, clear
from simulation.aed_meter import AEDMeasurement, AEDMeter
from simulation.scenario import ImpactEvent, NewsEvent, Scenario, ShockEvent
from training.apo import PromptOptimizer, ReplayState
from training.phase import PhaseRow, Trainer
from training.samples import Sample


@dataclass
class StepReport:
    """What the console shows after a step."""

    step: int
    date: str
    clearings: dict[str, Clearing]
    fundamental_prices: dict[str, float]
    decisions: list[float]
    fallbacks: int
    seconds: float
    completion_tokens: int
    events: list[str] = field(default_factory=list)


class Observer(Protocol):
    def on_step(self, model: MarketModel, report: StepReport) -> None: ...
    def on_phase_agent(self, phase: int, row: PhaseRow) -> None: ...
    def on_phase_done(self, phase: int, rows: list[PhaseRow]) -> None: ...
    def on_aed(self, phase: int, result: AEDMeasurement) -> None: ...
    def on_message(self, text: str) -> None: ...


class Silent:
    """An observer that shows nothing (evaluations, tests)."""

    def on_step(self, model: MarketModel, report: StepReport) -> None: ...
    def on_phase_agent(self, phase: int, row: PhaseRow) -> None: ...
    def on_phase_done(self, phase: int, rows: list[PhaseRow]) -> None: ...
    def on_aed(self, phase: int, result: AEDMeasurement) -> None: ...
    def on_message(self, text: str) -> None: ...


class MarketModel(mesa.Model):
    def __init__(self, scenario: Scenario, data: MarketData, dates: list[pd.Timestamp], store: RunStore, llm: LLM, *,
                 trainer: Trainer | PromptOptimizer | None, aed_meter: AEDMeter | None, observer: Observer, adapter_version: int = 0):
        """`dates` are the decision dates: step t decides at `dates[t]` and is paid by the return to
        the data's next trading date. Consecutive trading dates are the usual case; where `dates`
        skip days (`data.every`, `evaluate --every`), nobody trades on the days between and the
        price follows the data's own return over them. `trainer` trains the agents' adapters, or
        (a `PromptOptimizer`) their strategy prompts; None: no training. `adapter_version` is the
        phase behind adapters that are already loaded (an evaluation's)."""
        super().__init__(rng=np.random.default_rng(child_seed(scenario.run.seed, "model")))
        self.scenario, self.data, self.dates, self.store, self.llm = scenario, data, dates, store, llm
        self.trainer, self.aed_meter, self.observer = trainer, aed_meter, observer
        self.master_seed = scenario.run.seed
        self.assets = scenario.data.assets or data.assets
        self.factor_store = FactorStore(store.con, data)
        self.returns = data.prices.pivot(index="date", columns="asset", values="return")
        self.recent_variance = recent_variance(self.returns)
        closes = data.prices.pivot(index="date", columns="asset", values="close")
        self.fundamental = closes / closes.loc[dates[0]] * scenario.market.initial_price
        self.next_dates = data.next_trading_dates(dates[: scenario.run.steps])
        for spec in agent_specs(scenario):
            InvestorAgent(self, spec)  # Mesa registers it in self.agents
        self.next_step = 0
        self.loaded_version = adapter_version
        self.prices = {asset: scenario.market.initial_price for asset in self.assets}

    def investor(self, agent_id: int) -> InvestorAgent:
        return self.agents[agent_id]  # agents were created in agent-id order

    # --- the story of one step --------------------------------------------------------------

    def step(self) -> StepReport:
        t, started = self.next_step, time.perf_counter()
        self.rng = np.random.default_rng(child_seed(self.master_seed, "noise", t))  # step t draws the same whatever came before
        news, shocks, fired = self.fire_events(t)
        date, next_date = self.dates[t], self.next_dates[t]
        if t > 0 and date != self.next_dates[t - 1]:
            self.follow_the_data(self.next_dates[t - 1], date)
        observations = self.gather_factors(t, date, news)
        completions = self.deliberate(t, observations)
        clearings = self.clear(t, next_date, observations, completions, shocks)
        rows = self.settle(t, date, observations, completions, clearings)
        seconds = time.perf_counter() - started
        report = StepReport(t, str(date.date()), clearings, {a: float(self.fundamental.loc[next_date, a]) for a in self.assets},
                            [c.decision_depth for c in completions], sum(c.fallback_reason is not None for c in completions),
                            seconds, sum(row["completion_tokens"] for row in rows), fired)
        self.commit(t, date, clearings, shocks, rows, observations, report)
        self.next_step = t + 1
        self.observer.on_step(self, report)
        if self.training_due(t):
            self.training_phase(t)
        return report

    def fire_events(self, t: int) -> tuple[dict[str, list[str]], dict[str, float], list[str]]:
        """News per category, return shock per asset, and the impact in force from this step."""
        news: dict[str, list[str]] = {}
        shocks: dict[str, float] = {}
        fired: list[str] = []
        for event in self.scenario.events:
            if event.step != t:
                continue
            if isinstance(event, NewsEvent):
                news.setdefault(event.category, []).append(event.text)
                fired.append(f"news ({event.category}): {event.text}")
            elif isinstance(event, ShockEvent):
                for asset in [event.asset] if event.asset else self.assets:
                    shocks[asset] = shocks.get(asset, 0.0) + event.value
                fired.append(f"shock {event.value:+.1%}" + (f" on {event.asset}" if event.asset else ""))
            elif isinstance(event, ImpactEvent):
                fired.append(f"impact -> {event.value}")
        return news, shocks, fired

    def impact_at(self, t: int) -> float:
        impact = self.scenario.market.impact
        for event in sorted(self.scenario.events, key=lambda e: e.step):
            if isinstance(event, ImpactEvent) and event.step <= t:
                impact = event.value
        return impact

    def gather_factors(self, t: int, date: pd.Timestamp, news: dict[str, list[str]], use_memory: bool = True, prices: dict[str, float] | None = None) -> list[Observation]:
        """factors(t): each agent gets only its categories, dated at or before `date`."""
        observations = []
        for agent in self.agents:
            for asset in self.assets:
                factors = self.factor_store.visible(date, asset, agent.spec.visible_categories)
                visible_news = [text for category in agent.spec.visible_categories for text in news.get(category, [])]
                price = (prices or self.prices)[asset]
                observations.append(agent.observe(asset=asset, price=price, factors=factors, news=visible_news, use_memory=use_memory))
        return observations

    def deliberate(self, t: int, observations: list[Observation], greedy: bool = False, seed_key: str = "deliberate") -> list[Completion]:
        """deliberate(t): every agent's prompt through the model in batches, own adapter per row.
        `greedy` writes greedy beliefs (AED probes); decisions keep the agent's own temperature."""
        model_config = self.scenario.model
        prompts = [self.llm.chat_prompt(o.system, o.user) for o in observations]
        specs = [self.investor(o.agent_id).spec for o in observations]
        temperatures = [0.0 if greedy else spec.temperature for spec in specs]
        decision_temperatures = [spec.temperature for spec in specs]  # the agent's own policy, also on greedy probes
        agents = [o.agent_id for o in observations] if self.llm.routes_agents else None
        return self.llm.generate(prompts, temperatures, agents, belief_tokens=model_config.belief_tokens,
                                 max_prompt_tokens=model_config.max_prompt_tokens, batch_size=model_config.batch_size,
                                 seed=child_seed(self.master_seed, seed_key, t), decision_temperatures=decision_temperatures)

    def clear(self, t: int, next_date: pd.Timestamp, observations: list[Observation], completions: list[Completion], shocks: dict[str, float]) -> dict[str, Clearing]:
        """clear(t): net demand per asset moves its price to t+1."""
        clearings = {}
        for asset in self.assets:
            decisions = [c.decision_depth for o, c in zip(observations, completions) if o.asset == asset]
            noise = float(self.rng.normal(0.0, self.scenario.market.noise)) if self.scenario.market.noise > 0 else 0.0
            clearings[asset] = clear(self.prices[asset], float(self.returns.loc[next_date, asset]), decisions,
                                     impact=self.impact_at(t), noise=noise, shock=shocks.get(asset, 0.0))
        return clearings

    def settle(self, t: int, date: pd.Timestamp, observations: list[Observation], completions: list[Completion], clearings: dict[str, Clearing]) -> list[dict]:
        """settle(t+1): pay every decision its reward; agents update wealth and memory."""
        market = self.scenario.market
        rows = []
        for observation, completion in zip(observations, completions):
            agent = self.investor(observation.agent_id)
            realised = clearings[observation.asset].simulated_return
            paid = reward(market.reward, realised, completion.decision_depth, risk_preference=agent.spec.persona.risk_preference,
                          risk_aversion=market.risk_aversion, recent_variance=self.variance_at(date, observation.asset))
            agent.settle(date=str(date.date()), belief=completion.belief, decision_depth=completion.decision_depth, realised_return=realised, reward=paid)
            rows.append(decision_row(t, date, agent.spec.group, observation, completion, realised, paid, agent.wealth, self.adapter_version(agent.agent_id),
                                     agent.strategy_version))
        for asset, clearing in clearings.items():
            self.prices[asset] = clearing.next_price
        return rows

    def follow_the_data(self, since: pd.Timestamp, until: pd.Timestamp) -> None:
        """Days between two decision dates, on which nobody trades: each price moves by the data's return."""
        for asset in self.assets:
            self.prices[asset] *= float(self.fundamental.loc[until, asset] / self.fundamental.loc[since, asset])

    def variance_at(self, date: pd.Timestamp, asset: str) -> float:
        """Variance of the data's daily returns over the window ending at `date` (known at t)."""
        return float(self.recent_variance.loc[date, asset])

    def commit(self, t: int, date: pd.Timestamp, clearings: dict[str, Clearing], shocks: dict[str, float], rows: list[dict], observations: list[Observation], report: StepReport) -> None:
        """One transaction: the step is either all in the database or not at all."""
        market_rows = [{
            "step": t, "date": date, "asset": asset, "price": clearing.price,
            "next_price": clearing.next_price, "return": clearing.simulated_return,
            "fundamental_price": float(self.fundamental.loc[date, asset]),
            "fundamental_return": float(self.returns.loc[self.next_dates[t], asset]),
            "net_demand": clearing.net_demand, "volume": clearing.volume, "impact": self.impact_at(t),
            "shock": shocks.get(asset, 0.0),
        } for asset, clearing in clearings.items()]
        served = pd.concat([o.factors.assign(step=t, agent_id=o.agent_id, asset=o.asset) for o in observations], ignore_index=True)
        event_rows = [{"step": e.step, "kind": e.kind, "category": getattr(e, "category", None), "asset": getattr(e, "asset", None),
                       "value": getattr(e, "value", None), "text": getattr(e, "text", None)} for e in self.scenario.events if e.step == t]
        step_row = {"step": t, "date": date, "committed_at": pd.Timestamp.now("UTC").tz_localize(None), "wall_seconds": report.seconds,
                    "decisions": len(rows), "completion_tokens": report.completion_tokens,
                    "decisions_per_second": len(rows) / report.seconds, "tokens_per_second": report.completion_tokens / report.seconds}
        with self.store.transaction():
            self.store.insert("market", market_rows)
            self.store.insert("decisions", rows)
            if len(served):
                self.store.insert("factors_served", served[["step", "agent_id", "asset", "category", "name", "factor_date", "value"]])
            self.store.insert("events", event_rows)
            self.store.insert("steps", [step_row])

    # --- resume ------------------------------------------------------------------------------

    def restore_from_store(self) -> None:
        """Continue after the last committed step: prices, wealth, rewards, memories, adapters."""
        last = self.store.last_committed_step()
        self.next_step = last + 1
        if last < 0:
            return
        for row in self.store.query("SELECT asset, next_price FROM market WHERE step = ?", [last]).itertuples():
            self.prices[row.asset] = row.next_price
        history = self.store.query("SELECT * FROM decisions ORDER BY step, agent_id")
        asset_order = {asset: i for i, asset in enumerate(self.assets)}
        history = history.assign(asset_order=history["asset"].map(asset_order)).sort_values(["step", "agent_id", "asset_order"])
        for agent in self.agents:
            rows = history[history["agent_id"] == agent.agent_id]
            agent.cumulative_reward = float(rows["reward"].sum())
            last_row = rows.iloc[-1]
            agent.wealth, agent.last_decision, agent.last_belief = float(last_row.wealth), float(last_row.decision_depth), last_row.belief
            for row in rows.tail(agent.spec.memory_length).itertuples():
                agent.memory.append(Memory(str(pd.Timestamp(row.date).date()), row.belief, row.decision_depth, row.realised_return, row.reward))
        if isinstance(self.trainer, PromptOptimizer):
            self.restore_prompts()
        elif self.trainer is not None:
            phases = self.store.query("SELECT DISTINCT phase FROM training")["phase"]
            self.trainer.restore(int(phases.max()) if len(phases) else 0)
            if len(phases):
                self.publish_adapters(int(phases.max()))

    def catch_up_learning(self) -> None:
        """Measure AED at phase 0, and run a training phase that a crash interrupted."""
        if self.aed_meter is not None and self.next_step == 0 and not self._aed_measured(0):
            result = self.aed_meter.measure(self.answer_probes, 0, -1)
            with self.store.transaction():
                result.insert_into(self.store)
            self.observer.on_aed(0, result)
        if isinstance(self.trainer, PromptOptimizer) and self.store.scalar("SELECT count(*) FROM prompts") == 0:
            self.store.insert("prompts", [row.__dict__ for row in self.trainer.initial_rows()])
        last = self.next_step - 1
        if last >= 0 and self.training_due(last):
            phase = (last + 1) // self.scenario.training.every
            table = "prompts" if isinstance(self.trainer, PromptOptimizer) else "training"
            if not len(self.store.query(f"SELECT phase FROM {table} WHERE phase = ?", [phase])):
                self.training_phase(last)

    def _aed_measured(self, phase: int) -> bool:
        return bool(len(self.store.query("SELECT phase FROM aed WHERE phase = ?", [phase])))

    # --- learning ----------------------------------------------------------------------------

    def training_due(self, t: int) -> bool:
        return self.trainer is not None and (t + 1) % self.scenario.training.every == 0

    def adapter_version(self, agent_id: int) -> int:
        """Training phases behind the adapter the agent decides with (0 = the base model's behaviour)."""
        return self.next_step // self.scenario.training.every if isinstance(self.trainer, Trainer) else self.loaded_version

    def training_phase(self, t: int) -> None:
        """Train every agent on its samples since the last phase, then measure AED."""
        phase = (t + 1) // self.scenario.training.every
        if isinstance(self.trainer, PromptOptimizer):
            return self.prompt_phase(t, phase)
        samples = self.trainer_samples(t)
        rows = self.trainer.run_phase(phase, t, samples, seed=child_seed(self.master_seed, "phase", phase),
                                      on_agent_done=lambda row: self.observer.on_phase_agent(phase, row))
        self.publish_adapters(phase)
        aed_rows = self.aed_meter.measure(self.answer_probes, phase, t) if self.aed_meter else None
        with self.store.transaction():
            self.store.insert("training", [row.__dict__ for row in rows])
            if aed_rows:
                aed_rows.insert_into(self.store)
        self.observer.on_phase_done(phase, rows)
        if aed_rows:
            self.observer.on_aed(phase, aed_rows)

    def prompt_phase(self, t: int, phase: int) -> None:
        """APO: rewrite every agent's strategy prompt from its recent pay (training/apo.py), adopt
        what beats the current one on held-back states, then measure AED; one transaction."""
        started = time.perf_counter()
        result = self.trainer.run_phase(phase, t, self.replay_states(t), seed=child_seed(self.master_seed, "phase", phase))
        self.apply_prompts(result.current)
        aed_rows = self.aed_meter.measure(self.answer_probes, phase, t) if self.aed_meter else None
        with self.store.transaction():
            self.store.insert("prompts", [row.__dict__ for row in result.prompts])
            self.store.insert("critiques", result.critiques)
            self.store.insert("apo_usage", result.usage)
            if aed_rows:
                aed_rows.insert_into(self.store)
        for agent in self.agents:
            gain = result.replay_gain.get(agent.agent_id)
            self.observer.on_message(f"  APO phase {phase} agent {agent.agent_id}: prompt v{agent.strategy_version}, replay gain "
                                     f"{'n/a' if gain is None else f'{gain:+.5f}'}: \"{' '.join(agent.strategy.split()[:8])}...\"")
        self.observer.on_message(f"APO phase {phase} done in {time.perf_counter() - started:.0f} s: "
                                 f"{sum(row.adopted and not row.reason.startswith('beam') for row in result.prompts)} prompts adopted, "
                                 f"{sum(row.reason.startswith('rejected') for row in result.prompts)} rejected")
        if aed_rows:
            self.observer.on_aed(phase, aed_rows)

    def apply_prompts(self, current: dict[int, tuple[int, str]]) -> None:
        for agent in self.agents:
            if agent.agent_id in current:
                agent.strategy_version, agent.strategy = current[agent.agent_id]

    def restore_prompts(self) -> None:
        self.trainer.restore(self.store.query("SELECT * FROM prompts").to_dict("records"))
        self.apply_prompts({agent.agent_id: self.trainer.strategy(agent.agent_id) for agent in self.agents})

    def replay_states(self, t: int) -> dict[int, list[ReplayState]]:
        """Each agent's most recent decisions up to step t (`training.max_samples`; 0 = all), as APO replays them."""
        limit = self.scenario.training.max_samples
        first = max(t + 1 - limit, 0) if limit else 0
        frame = self.store.query("SELECT step, date, agent_id, asset, prompt, belief, decision_depth, reward, realised_return, prompt_version "
                                 "FROM decisions WHERE step BETWEEN ? AND ? ORDER BY agent_id, step, asset", [first, t])
        states: dict[int, list[ReplayState]] = {agent.agent_id: [] for agent in self.agents}
        for row in frame.itertuples(index=False):
            spec = self.investor(row.agent_id).spec
            states[row.agent_id].append(ReplayState(
                step=row.step, asset=row.asset, prompt=row.prompt, strategy=self.trainer.text_of(row.agent_id, int(row.prompt_version or 0)),
                seen=" ".join(line.strip() for line in row.prompt.splitlines() if "factors:" in line)[:400] or "(no factors)", belief=row.belief,
                decision=row.decision_depth, reward=row.reward, realised_return=row.realised_return, temperature=spec.temperature,
                risk_preference=spec.persona.risk_preference, recent_variance=self.variance_at(pd.Timestamp(row.date), row.asset)))
        return states

    def publish_adapters(self, phase: int) -> None:
        """A server that loads LoRA at run time gets every agent's adapter of `phase`, each under a
        name of its own (run, agent, version)."""
        if not hasattr(self.llm, "publish_adapters"):
            return
        run_id = self.store.run_info()["run_id"]
        self.llm.publish_adapters({agent.agent_id: (f"{run_id}-agent{agent.agent_id}-v{phase}",
                                                    str(self.trainer.adapter_path(phase, agent.agent_id).resolve())) for agent in self.agents})

    def answer_probes(self, probes: list[tuple[int, pd.Timestamp]]) -> list[list[list[Completion]]]:
        """Every agent's answer on each probe state, in one batch: [probe][asset][agent]. A probe is
        the state at (step, date) as an agent would see it then, at the data's fundamental price,
        with no news and no memory; beliefs are greedy, the decision keeps the agent's temperature."""
        observations = []
        for probe_step, date in probes:
            prices = {asset: float(self.fundamental.loc[date, asset]) for asset in self.assets}
            observations.append(self.gather_factors(probe_step, date, news={}, use_memory=False, prices=prices))
        completions = iter(self.deliberate(probes[0][0], [o for probe in observations for o in probe], greedy=True, seed_key="aed"))
        answers = []
        for probe in observations:
            answered = [(o, next(completions)) for o in probe]
            answers.append([[c for o, c in answered if o.asset == asset] for asset in self.assets])
        return answers

    def trainer_samples(self, t: int) -> dict[int, list[Sample]]:
        limit = self.scenario.training.max_samples  # most recent decisions per agent (0 = all); a step holds at least one
        first = max(t + 1 - limit, 0) if limit else 0
        frame = self.store.query(
            "SELECT step, date, agent_id, asset, prompt, prompt_ids, completion_ids, trainable_mask, decision_depth, realised_return, reward, belief, adapter_version "
            "FROM decisions WHERE step BETWEEN ? AND ? ORDER BY agent_id, step, asset", [first, t])
        samples: dict[int, list] = {agent.agent_id: [] for agent in self.agents}
        for row in frame.itertuples(index=False):
            spec = self.investor(row.agent_id).spec
            samples[row.agent_id].append(Sample(
                agent_id=row.agent_id, step=row.step, prompt=row.prompt, prompt_ids=list(row.prompt_ids),
                completion_ids=list(row.completion_ids), trainable=[bool(x) for x in row.trainable_mask],
                decision_depth=row.decision_depth, realised_return=row.realised_return, reward=row.reward, belief=row.belief,
                temperature=spec.temperature, risk_preference=spec.persona.risk_preference,
                recent_variance=self.variance_at(pd.Timestamp(row.date), row.asset), adapter_version=int(row.adapter_version)))
        return samples


def agent_specs(scenario: Scenario) -> list[AgentSpec]:
    specs = []
    for group in scenario.agents.groups:
        for _ in range(group.count):
            agent_id = len(specs)
            specs.append(AgentSpec(agent_id, group.name, tuple(group.categories),
                                   Persona(group.optimism, group.rationality, group.risk_preference),
                                   group.temperature, group.memory_length, child_seed(scenario.run.seed, "agent", agent_id)))
    return specs


def decision_row(t: int, date: pd.Timestamp, group: str, observation: Observation, completion: Completion, realised: float, paid: float, wealth: float,
                 adapter_version: int, prompt_version: int = 0) -> dict:
    return {
        "step": t, "date": date, "agent_id": observation.agent_id, "group_name": group, "asset": observation.asset,
        "prompt": completion.prompt, "belief": completion.belief, "completion": completion.completion,
        "decision_depth": completion.decision_depth, "fallback": completion.fallback_reason is not None,
        "fallback_reason": completion.fallback_reason,
        "prompt_tokens": completion.prompt_token_count, "completion_tokens": completion.completion_token_count,
        "latency_s": completion.latency_s, "served_by": completion.served_by, "retries": completion.retries, "prompt_version": prompt_version,
        "adapter_version": adapter_version, "realised_return": realised, "reward": paid,
        "position": completion.decision_depth / 10.0, "wealth": wealth,
        "expected_decision": completion.expected_decision, "decision_std": completion.decision_std,
        "prompt_ids": completion.prompt_ids, "completion_ids": completion.completion_ids, "trainable_mask": completion.trainable,
    }
