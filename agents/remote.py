"""The OpenAI-compatible backend: the agents think with a model behind `/v1/chat/completions`.

Any server that speaks the OpenAI chat API will do: Ollama, vLLM, SGLang, llama.cpp's server,
`transformers serve`, `python -m simulation serve`, or a hosted API. A remote model is frozen
(LoRA training is refused for it; APO works with it). What is asked and how it is read:

- **The belief and the decision.** The agent's system and user messages, plus one line asking for
  JSON `{"belief": ..., "decision_depth": ...}`, constrained as strongly as the server allows
  (`model.constraint`): `json_schema` sends OpenAI's `response_format` with a JSON schema
  (OpenAI, vLLM, SGLang, llama.cpp's server, Ollama); `vllm_regex` sends vLLM's
  `structured_outputs: {regex}` and `sglang_regex` SGLang's `regex`, both for a
  `belief\\nDecision: N` answer; `llamacpp_grammar` sends llama.cpp's GBNF `grammar` for it;
  `decision_slot` asks `python -m simulation serve` for the agent's own forced decision slot (the
  prompt is then exactly the in-process one); `none` asks and parses. Every answer is parsed the same robust way (JSON first, then a
  `Decision: N` line). A malformed answer (no JSON, no number, a number outside [-10, 10]) is
  counted and asked again with the next seed, up to `max_retries` times; then the decision falls
  back to 0 with its reason, stored in `decisions.fallback_reason` as the in-process slot's are.
- **Per decision**: the prompt and completion tokens the server reports, the latency, the
  server's model id (`decisions.served_by`) and the malformed answers retried. A server that
  returns the exact decision distribution (`python -m simulation serve` does, in its
  `decision` extension field) fills `expected_decision` and `decision_std`; others leave them NULL.
- **Seeds**: every request sends `seed` (a child of the step's seed, below 2^31, the range most
  servers take; a retry sends the next one). Most servers promise no
  determinism even then (batching changes the arithmetic), and the run records that.
- **Faults**: the official `openai` client retries timeouts, connection errors, 408/409/429 and
  5xx with exponential backoff, `max_retries` times, each try bounded by `timeout_s`. A server
  that stays down raises `RemoteModelError`, one line: the run is marked failed, every committed
  step is kept, and `--resume` continues once the server is back.

**LoRA on a server that loads adapters at run time** (vLLM with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora`; `model.lora_updates = true`): the
backend keeps a local copy of the same base weights (`local`, from `model.path`). It writes each
decision's prompt with the local chat template and re-tokenises the answer locally (belief, the
slot's marker, the number), so the trainer scores exactly what it scores in-process. After each
training phase `publish_adapters` registers every agent's new adapter with
`POST /v1/load_lora_adapter` under a new name per version (vLLM warns that a reused name can serve
stale cached blocks), and each agent's requests then name its adapter.

The API key is read from the environment variable named by `model.api_key_env` when the backend
is built and handed to the client only: it is never stored, logged or printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass

from agents.llm import Completion, ModelSource
from core.errors import UserError

DECISION_FIELDS = ("belief", "decision_depth")
JSON_INSTRUCTION = ('Answer with JSON only: {"belief": "<your belief, one sentence>", "decision_depth": <an integer from -10 (sell all) '
                    'to 10 (buy all)>}.')
LINE_INSTRUCTION = "Answer in two lines: your belief in one sentence, then 'Decision: N' with N an integer from -10 (sell all) to 10 (buy all)."
DECISION_LINE = re.compile(r"""decision(?:_depth)?[\s:"'=]{0,4}([+-]?\d+(?:\.\d+)?)""", re.IGNORECASE)
DETERMINISM = ("the request carries a seed; an OpenAI-compatible server may still answer differently for the same seed "
               "(batching, hardware); python -m simulation serve is deterministic for a given request")


class RemoteModelError(UserError):
    """The server did not answer, after every retry."""


def decision_schema(belief_chars: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": list(DECISION_FIELDS),
            "properties": {"belief": {"type": "string", "maxLength": belief_chars},
                           "decision_depth": {"type": "integer", "minimum": -10, "maximum": 10}}}


def line_regex(belief_chars: int) -> str:
    return rf"[^\n]{{1,{belief_chars}}}\nDecision: (-?(10|[0-9]))"


def line_grammar(belief_chars: int) -> str:
    return f'root ::= belief "\\nDecision: " number\nbelief ::= [^\\n]{{1,{belief_chars}}}\nnumber ::= "-"? ("10" | [0-9])\n'


@dataclass(frozen=True)
class Parsed:
    belief: str
    decision: float | None
    problem: str | None  # why the answer is unusable: empty, malformed_json, non_numeric, out_of_range


def parse_answer(text: str) -> Parsed:
    """Read a belief and a decision from whatever the server wrote."""
    text = (text or "").strip()
    if not text:
        return Parsed("", None, "empty")
    belief, number, problem = text, None, None
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            data = json.loads(text[start:end + 1])
            belief = str(data.get("belief", "")).strip()
            number = data.get("decision_depth", data.get("decision"))
            problem = None if number is not None else "non_numeric"
        except (json.JSONDecodeError, AttributeError):
            problem = "malformed_json"
    if number is None:
        match = DECISION_LINE.search(text)
        if match:
            number, problem = match.group(1), None
            belief = text[: match.start()].strip().strip('{}"').strip() or belief
        else:
            problem = problem or "non_numeric"
    if number is None:
        return Parsed(belief, None, problem)
    try:
        value = float(number)
    except (TypeError, ValueError):
        return Parsed(belief, None, "non_numeric")
    if not -10 <= value <= 10:
        return Parsed(belief, None, "out_of_range")
    return Parsed(belief, float(round(value)), None)


class RemoteLLM:
    """What the engine asks of an LLM (`chat_prompt`, `generate`), answered by a remote server."""

    adapters = None  # a remote model has no local adapters
    device = "remote"
    dtype = "remote"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, constraint: str = "json_schema", concurrency: int = 8,
                 timeout_s: float = 60.0, max_retries: int = 3, scenario_file: str | None = None, local=None):
        self.base_url, self.model, self.constraint = base_url.rstrip("/"), model, constraint
        self.local = local  # an agents.llm.LLM with the server's base weights: LoRA is trained here and published there
        self.adapter_names: dict[int, str] = {}
        self._messages: dict[str, list[dict]] = {}
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(scenario_file, "model.api_key_env", f"the environment variable {api_key_env} is not set",
                                f"export {api_key_env}=... before the run (the key is never stored)")
            self._api_key = key
        else:
            self._api_key = "none"  # local servers take any key
        self.source = ModelSource(f"openai:{self.base_url}#{model}", self.base_url, None)
        self.sha256 = f"remote:{self.base_url}#{model}" + (f"+local:{local.sha256}" if local is not None else "")
        if local is not None:
            self.device, self.dtype = local.device, local.dtype
        self.served_by: set[str] = set()

    def __repr__(self) -> str:  # never the key
        return f"RemoteLLM({self.base_url!r}, {self.model!r})"

    def chat_prompt(self, system: str, user: str) -> str:
        """The messages as JSON: what `decisions.prompt` stores for a remote model; with a local copy,
        its chat template's text, as in-process (the messages are kept for the request)."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if self.local is None:
            return json.dumps(messages, ensure_ascii=False)
        prompt = self.local.chat_prompt(system, user)
        self._messages[prompt] = messages
        return prompt

    @property
    def routes_agents(self) -> bool:
        """Whether each row names its agent's own model (`agent-{agent_id}`, or its published adapter)."""
        return "{agent_id}" in self.model or self.local is not None

    def model_for(self, agent: int | None) -> str:
        if agent is not None and agent in self.adapter_names:
            return self.adapter_names[agent]
        return self.model.format(agent_id=agent if agent is not None else 0)

    def publish_adapters(self, adapters: dict[int, tuple[str, str]]) -> None:
        """Register each agent's adapter `(name, folder)` with the server (`POST /v1/load_lora_adapter`);
        from now on the agent's requests name it. A name the server already holds is taken as loaded."""
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key}"}
        for agent, (name, folder) in sorted(adapters.items()):
            try:
                answer = httpx.post(f"{self.base_url}/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)}, headers=headers,
                                    timeout=self.timeout_s)
            except httpx.HTTPError as error:
                raise RemoteModelError(self.base_url, "model.lora_updates", f"the server did not take adapter {name} ({type(error).__name__})",
                                       "start the server with runtime LoRA updates (docs/backends.md), then --resume") from None
            if answer.status_code != 200 and "already" not in answer.text.lower():
                raise RemoteModelError(self.base_url, "model.lora_updates", f"the server refused adapter {name} (HTTP {answer.status_code}: {answer.text[:160]})",
                                       "start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and let it read the run's folder")
            self.adapter_names[agent] = name

    def generate(self, prompts: list[str], temperatures: list[float], agents: list[int] | None = None, *, belief_tokens: int = 32,
                 max_prompt_tokens: int = 768, batch_size: int = 32, seed: int = 0, decision_temperatures: list[float] | None = None,
                 exact: bool = True) -> list[Completion]:
        """Every prompt as one request, `concurrency` at a time; the same arguments as `LLM.generate`
        (`agents` names each row's agent, for a per-agent `model` such as `agent-{agent_id}`)."""
        del max_prompt_tokens, batch_size, decision_temperatures, exact  # the server decides these
        return self._each(len(prompts), lambda client, row: self._one(client, prompts[row], temperatures[row], agents[row] if agents is not None else None,
                                                                     belief_tokens, seed + row))

    def complete(self, conversations: list[list[dict]], agents: list[int] | None = None, *, max_tokens: int = 96, temperature: float = 0.7,
                 seed: int = 0, batch_size: int = 16) -> list[tuple[str, int, int]]:
        """Free text, as `LLM.complete`: one unconstrained chat request per conversation."""
        del batch_size

        async def one(client, row: int) -> tuple[str, int, int]:
            response = await self._create(client, model=self.model_for(agents[row] if agents is not None else None), messages=conversations[row],
                                          temperature=temperature, max_tokens=max_tokens, seed=(seed + row) % 2**31)
            usage = response.usage
            text = (response.choices[0].message.content or "") if response.choices else ""
            return text.strip(), (usage.prompt_tokens or 0) if usage else 0, (usage.completion_tokens or 0) if usage else 0
        return self._each(len(conversations), one)

    def _each(self, count: int, answer) -> list:
        """`answer(client, row)` for rows 0..count-1, `concurrency` at a time, on one client."""
        async def run() -> list:
            import openai

            limit = asyncio.Semaphore(self.concurrency)
            async with openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self.timeout_s, max_retries=self.max_retries) as client:
                async def one(row: int):
                    async with limit:
                        return await answer(client, row)
                return list(await asyncio.gather(*(one(row) for row in range(count))))
        return asyncio.run(run())

    async def _create(self, client, **request):
        """One chat request; a server that stays down after the client's retries, or refuses the
        request, is one `RemoteModelError` line."""
        import openai

        try:
            return await client.chat.completions.create(**request)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError, openai.RateLimitError) as error:
            raise RemoteModelError(self.base_url, "model.base_url", f"the server did not answer after {self.max_retries} retries "
                                   f"({type(error).__name__}: {str(error).splitlines()[0][:160]})",
                                   "start or fix the server, then continue with: python -m simulation run --resume RUN_DIR") from None
        except openai.APIStatusError as error:
            raise RemoteModelError(self.base_url, "model.model", f"the server refused the request (HTTP {error.status_code}: "
                                   f"{str(error.message).splitlines()[0][:160]})", "check model.model, model.constraint and the server's logs") from None

    def _request(self, messages: list[dict], temperature: float, agent: int | None, belief_tokens: int, seed: int) -> dict:
        belief_chars = belief_tokens * 6
        if self.constraint != "decision_slot":  # the slot needs no instruction: the prompt stays the in-process one
            instruction = LINE_INSTRUCTION if self.constraint in ("vllm_regex", "sglang_regex", "llamacpp_grammar") else JSON_INSTRUCTION
            messages = [*messages[:-1], {"role": "user", "content": messages[-1]["content"] + "\n" + instruction}]
        request = {"model": self.model_for(agent), "messages": messages, "temperature": temperature, "seed": seed,
                   "max_tokens": belief_tokens if self.constraint == "decision_slot" else belief_tokens + 24}
        extra = {}
        if self.constraint == "json_schema":
            request["response_format"] = {"type": "json_schema", "json_schema": {"name": "decision", "strict": True, "schema": decision_schema(belief_chars)}}
        elif self.constraint == "vllm_regex":
            extra["structured_outputs"] = {"regex": line_regex(belief_chars)}
        elif self.constraint == "sglang_regex":
            extra["regex"] = line_regex(belief_chars)
        elif self.constraint == "llamacpp_grammar":
            extra["grammar"] = line_grammar(belief_chars)
        elif self.constraint == "decision_slot":
            extra["decision_slot"] = True
        if extra:
            request["extra_body"] = extra
        return request

    async def _one(self, client, prompt: str, temperature: float, agent: int | None, belief_tokens: int, seed: int) -> Completion:
        messages = self._messages.get(prompt) or json.loads(prompt)
        started = time.perf_counter()
        prompt_tokens = completion_tokens = 0
        parsed, text, served, extension = Parsed("", None, "empty"), "", None, None
        for attempt in range(self.max_retries + 1):
            response = await self._create(client, **self._request(messages, temperature, agent, belief_tokens, (seed + 1_000_003 * attempt) % 2**31))
            served = response.model
            if response.usage is not None:
                prompt_tokens += response.usage.prompt_tokens or 0
                completion_tokens += response.usage.completion_tokens or 0
            text = (response.choices[0].message.content or "") if response.choices else ""
            extension = getattr(response, "decision", None) or (response.model_extra or {}).get("decision")
            parsed = parse_answer(text)
            if parsed.problem is None:
                break
        if served:
            self.served_by.add(served)
        decision = parsed.decision if parsed.problem is None else 0.0
        exact = extension if isinstance(extension, dict) and parsed.problem is None else {}
        prompt_ids, completion_ids, trainable = self._local_tokens(prompt, parsed.belief, decision)
        return Completion(
            prompt=prompt, prompt_ids=prompt_ids, completion_ids=completion_ids, trainable=trainable, completion=text, belief=parsed.belief,
            decision_depth=decision,
            fallback_reason=parsed.problem, latency_s=time.perf_counter() - started,
            expected_decision=exact.get("expected_decision"), decision_std=exact.get("decision_std"),
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, served_by=served, retries=attempt,
        )

    def _local_tokens(self, prompt: str, belief: str, decision: float) -> tuple[list[int], list[int], list[bool]]:
        """The answer as the local model would have written it: prompt ids, belief + marker + number,
        and which of them the model chose (what the trainer scores); empty without a local copy."""
        if self.local is None:
            return [], [], []
        tokenizer, slot, tree = self.local.tokenizer, self.local.slot, self.local.tree
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        belief_ids = tokenizer(belief or ".", add_special_tokens=False).input_ids
        marker = list(slot.marker_after(belief_ids))
        number = tree.path_tokens(tree.outcome_values.index(float(decision) + 0.0))
        return prompt_ids, belief_ids + marker + number, [True] * len(belief_ids) + [False] * len(marker) + [True] * len(number)
