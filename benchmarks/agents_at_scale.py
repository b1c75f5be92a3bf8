"""Many agents at the speed of one: deliberation and training cost against the number of agents.

One run measures, on the same machine and model:
- the dense matmul peak of the model's dtype (a square GEMM);
- deliberation (belief, then the decision's exact distribution, as a simulation step does) at N
  agents, one prompt each, for three ways of holding the agents' adapters: none (the base model),
  PEFT's mixed-adapter batch (`adapter_names`, which loops over the adapters in every adapted
  layer), and the stacked layer of `agents/lora.py` (on a CPU where the decoding kernel of
  `agents/lora_kernel.py` is built, also the stacked layer with it switched off, `stacked_bmm`);
  decisions/s, tokens/s, and the model FLOPs they imply as a fraction of the peak;
- a training phase at N agents, all agents jointly against one agent at a time: seconds per
  sample, and the model FLOPs the phase does as a fraction of the peak (`phase_flops`).
FLOPs are 2 x (non-embedding parameters) per processed token plus the LM head where logits are
taken; attention is left out (under 10 % at these lengths). Adapters get random B matrices, so no
path can skip them as zero. Each deliberation is timed `--repeats` times, the ways
interleaved, and the median is reported; a small phase runs first, untimed, as a warm-up.

    python -m benchmarks.agents_at_scale                        # SmolLM2-135M, 8/32/100 agents
    python -m benchmarks.agents_at_scale --random-config qwen2.5-1.5b --dtype bfloat16 --device cuda --agents 100
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from agents.decoding import split_tokens
from agents.llm import LLM
from agents.lora import LoraSpec
from agents.lora_kernel import SWITCH, decoding_path
from agents.scoring import packed_tokens
from benchmarks.learning import ARMS, Market, Settings
from benchmarks.results_file import RESULTS_DIR, write_result
from core.provenance import provenance
from core.seeding import child_seed
from market.payoff import reward
from training.config import TrainingConfig
from training.phase import Trainer
from training.samples import sample_from_completion

QWEN_15B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                "vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1_000_000.0, "tie_word_embeddings": True}


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Achieved GFLOP/s of a square GEMM: the practical peak this machine gives this dtype."""
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    synchronise(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronise(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


@contextmanager
def kernel_switched(on: bool):
    """The CPU decoding kernel of agents/lora_kernel.py on (where built) or off (the bmm path) inside the block."""
    saved = os.environ.get(SWITCH)
    os.environ[SWITCH] = "1" if on else "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[SWITCH]
        else:
            os.environ[SWITCH] = saved


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model a speed benchmark loads (`load`): --model, --random-config, --device, --dtype."""
    parser.add_argument("--model", default="packaged", help="model path as in [model] path")
    parser.add_argument("--random-config", choices=["qwen2.5-1.5b"], help="a random-weight model of that size instead (no download)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")


def load(args) -> LLM:
    if args.random_config is None:
        return LLM.load(args.model, device=args.device, dtype=args.dtype)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.device import resolve_device, resolve_dtype
    reference = LLM.load("packaged", device="cpu")  # its tokenizer; the weights are random
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(child_seed(args.seed, "random weights"))
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN_15B, bos_token_id=reference.tokenizer.bos_token_id, eos_token_id=reference.tokenizer.eos_token_id))
    return LLM.from_model(reference.tokenizer, model.to(device=device, dtype=dtype), model_id="random:qwen2.5-1.5b")


def dense_parameters(llm: LLM) -> int:
    return sum(p.numel() for name, p in llm.model.named_parameters() if "embed" not in name and "lora_" not in name)


def prompts(llm: LLM, count: int, seed: int) -> list[str]:
    market = Market(llm, seed, Settings(train_dates=max(count, 8), heldout_dates=4))
    return [market.prompt(date, ARMS["treated" if index % 2 else "control"]) for index, date in enumerate(market.dates[:count])]


def randomise_adapters(llm: LLM, seed: int) -> None:
    generator = torch.Generator().manual_seed(child_seed(seed, "adapters"))
    with torch.no_grad():
        for param in llm.adapters.parameters():
            param.copy_(torch.randn(param.shape, generator=generator).to(param.device) * 0.01)


@contextmanager
def peft_mixed(llm: LLM, agents: int, spec: LoraSpec, seed: int):
    """Route `llm.route(rows)` through PEFT's mixed-adapter batch (one named adapter per agent)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules), layers_to_transform=list(spec.layers) if spec.layers else None)
    peft = get_peft_model(llm.model, config, adapter_name="agent_0")
    for agent in range(1, agents):
        peft.add_adapter(f"agent_{agent}", config)
    peft.eval()  # get_peft_model leaves the model in training mode, where PEFT refuses mixed batches
    generator = torch.Generator().manual_seed(child_seed(seed, "adapters"))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator).to(param.device) * 0.01)
    original = llm.route

    def route(rows):
        if rows is None:
            return original(None)
        return peft._enable_peft_forward_hooks(adapter_names=[f"agent_{row}" if row >= 0 else "__base__" for row in rows])

    llm.route = route
    try:
        yield
    finally:
        llm.route = original
        peft.unload()


def deliberate(llm: LLM, texts: list[str], agents: list[int] | None, belief_tokens: int, batch_size: int, dense: int, seed: int) -> dict:
    synchronise(llm.device)
    started = time.perf_counter()
    completions = llm.generate(texts, [1.0] * len(texts), agents, belief_tokens=belief_tokens, batch_size=batch_size, seed=child_seed(seed, "deliberate"))
    synchronise(llm.device)
    seconds = time.perf_counter() - started
    prompt_tokens = sum(len(c.prompt_ids) for c in completions)
    generated = sum(len(c.completion_ids) for c in completions)
    tree = len(llm.tree.fed_nodes) * len(completions)  # the decision pass feeds the tree's nodes
    flops = 2 * dense * (prompt_tokens + generated + tree) + 2 * llm.hidden_size * llm.model.config.vocab_size * generated
    return {"seconds": round(seconds, 2), "decisions_per_s": len(completions) / seconds, "generated_tokens_per_s": generated / seconds,
            "processed_tokens_per_s": (prompt_tokens + generated + tree) / seconds, "gflops_per_s": flops / seconds / 1e9}


def phase_flops(llm: LLM, rows: list[tuple[int, int]], config: TrainingConfig, dense: int) -> float:
    """Model FLOPs of one phase over `rows` ((tokens fed, belief tokens) per (state, belief) row,
    nothing held back), as training/rl.py does them: the frozen layers below the adapters once
    (the trunk); the adapted layers once to score the rows under the adapters as they are, once
    more under the base model for the belief leash (kl_coef > 0), then forward and backward in
    every epoch (the backward's input gradient through a frozen layer costs one forward; the LoRA
    weight gradients at rank r are negligible); the full-vocabulary head at each belief token in
    each of those passes. The decision tree's head (a few dozen tokens) is left out."""
    adapted = len(llm.adapters.spec.layers) if llm.adapters is not None and llm.adapters.spec.layers else llm.layer_count
    per_layer = dense / llm.layer_count
    passes = 1 + (config.kl_coef > 0) + 2 * config.epochs
    tokens = sum(fed for fed, _ in rows)
    beliefs = sum(belief for _, belief in rows)
    return 2 * per_layer * tokens * ((llm.layer_count - adapted) + adapted * passes) + 2 * llm.hidden_size * llm.model.config.vocab_size * beliefs * passes


def phase_cost(llm: LLM, agents: int, samples_per_agent: int, config: TrainingConfig, belief_tokens: int, batch_size: int, joint: bool, seed: int, dense: int) -> dict:
    """Seconds per sample and GFLOP/s of one phase, all agents jointly or one agent at a time (the same samples)."""
    market = Market(llm, child_seed(seed, "phase market"), Settings(train_dates=max(samples_per_agent, 8), heldout_dates=4))
    texts = [market.prompt(date, ARMS["treated"]) for date in market.dates[:samples_per_agent]]
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(llm, config, Path(folder), list(range(agents)), reward="linear", risk_aversion=0.0,
                          belief_tokens=belief_tokens, max_prompt_tokens=768, batch_size=batch_size)
        trainer.attach()
        completions = llm.generate(texts * agents, [1.0] * (agents * samples_per_agent), [a for a in range(agents) for _ in texts],
                                   belief_tokens=belief_tokens, batch_size=batch_size, seed=child_seed(seed, "samples"), exact=False)
        samples = {agent: [] for agent in range(agents)}
        rows = []
        for index, completion in enumerate(completions):
            parts = split_tokens(llm.slot, belief_tokens, completion.completion_ids)
            rows.append((packed_tokens(llm, completion.prompt_ids, parts.belief_ids, parts.marker_ids), len(parts.belief_ids)))
            agent, day = divmod(index, samples_per_agent)
            realised = market.next_return(market.dates[day])
            samples[agent].append(sample_from_completion(completion, agent_id=agent, step=day, realised_return=realised, reward=reward("linear", realised, completion.decision_depth),
                                                         temperature=1.0, risk_preference=0.5, recent_variance=1e-4))
        synchronise(llm.device)
        started = time.perf_counter()
        if joint:
            trainer.run_phase(1, samples_per_agent, samples, seed=child_seed(seed, "phase"))
        else:
            for agent in range(agents):
                trainer.run_phase(1, samples_per_agent, {agent: samples[agent]}, seed=child_seed(seed, "phase"))
        synchronise(llm.device)
        seconds = time.perf_counter() - started
        flops = phase_flops(llm, rows, config, dense)
    llm.detach_adapters()
    return {"seconds": round(seconds, 2), "seconds_per_sample": seconds / (agents * samples_per_agent), "gflop_per_sample": flops / len(rows) / 1e9,
            "gflops_per_s": flops / seconds / 1e9, "tokens_per_row": sum(tokens for tokens, _ in rows) / len(rows)}


def _median(runs: list[dict]) -> dict:
    """The run of median time, with every run's seconds beside it."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return ordered[len(ordered) // 2] | {"repeats_seconds": [run["seconds"] for run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--agents", type=int, nargs="+", default=[8, 32, 100], help="agent counts for deliberation")
    parser.add_argument("--phase-agents", type=int, nargs="+", default=[8, 32], help="agent counts for the phase cost")
    parser.add_argument("--samples", type=int, default=8, help="samples per agent in the phase")
    parser.add_argument("--belief-tokens", type=int, default=16, help="most belief tokens (16, as in every earlier result file; the base scenario writes 12)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed deliberations per way and agent count (the median is reported)")
    parser.add_argument("--skip-peft", action="store_true", help="leave PEFT's mixed batch out (it is slow at many agents)")
    parser.add_argument("--seed", type=int, default=0, help="master seed of the prompts, samples and phases")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    llm = load(args)
    base_model = llm.model
    peak = matmul_peak(llm.dtype, llm.device)
    dense = dense_parameters(llm)
    config = TrainingConfig(epochs=1, holdout=0.0, micro_batch=8)
    layers = llm.layer_count
    spec = LoraSpec(config.lora_rank, config.lora_alpha, tuple(config.target_modules), tuple(range(layers - config.lora_layers, layers)))
    result = {"provenance": provenance(), "settings": vars(args) | {"out": str(args.out) if args.out else None}, "model": llm.source.model_id, "device": str(llm.device), "dtype": str(llm.dtype),
              "threads": torch.get_num_threads(), "matmul_peak_gflops": peak, "dense_parameters": dense, "lora": spec.__dict__,
              "deliberation": {}, "phase": {}}
    out = args.out or RESULTS_DIR / f"agents-at-scale-{llm.device.type}.json"
    result["lora_decoding"] = decoding_path(llm.device)
    stacked_ways = ("stacked", "stacked_bmm") if result["lora_decoding"] == "kernel" else ("stacked",)
    print(f"{result['model']} on {result['device']} ({result['dtype']}), matmul peak {peak:.0f} GFLOP/s, LoRA on {len(spec.layers)} layers x {len(spec.target_modules)} projections")
    deliberate(llm, prompts(llm, 2, args.seed), None, args.belief_tokens, 2, dense, args.seed)  # warm-up
    phase_cost(llm, 2, 2, config, args.belief_tokens, args.batch_size, joint=True, seed=args.seed, dense=dense)  # warm-up
    for count in args.phase_agents:
        rows = {mode: phase_cost(llm, count, args.samples, config, args.belief_tokens, args.batch_size, joint=mode == "joint", seed=args.seed, dense=dense)
                for mode in ("joint", "one_by_one")}
        for mode, row in rows.items():
            row["fraction_of_peak"] = row["gflops_per_s"] / peak
            print(f"  phase at {count:>3} agents x {args.samples} samples, {mode:<10}: {row['seconds_per_sample']:.3f} s per sample ({row['seconds']} s), "
                  f"{row['gflop_per_sample']:.0f} GFLOP per sample, {row['fraction_of_peak']:.0%} of peak", flush=True)
        result["phase"][count] = rows
        write_result(out, result)
    for count in args.agents:
        texts = prompts(llm, count, args.seed)
        timed: dict[str, list[dict]] = {}
        for _ in range(args.repeats):  # the ways interleaved, so a slow drift of the machine reaches all of them
            timed.setdefault("none", []).append(deliberate(llm, texts, None, args.belief_tokens, args.batch_size, dense, args.seed))
            if not args.skip_peft:
                with peft_mixed(llm, count, spec, args.seed):
                    timed.setdefault("peft_mixed", []).append(deliberate(llm, texts, list(range(count)), args.belief_tokens, args.batch_size, dense, args.seed))
                llm.model = base_model
            for way in stacked_ways:
                llm.attach_adapters(count, spec)
                randomise_adapters(llm, args.seed)
                with kernel_switched(way == "stacked"):
                    timed.setdefault(way, []).append(deliberate(llm, texts, list(range(count)), args.belief_tokens, args.batch_size, dense, args.seed))
                llm.detach_adapters()
        rows = {name: _median(runs) for name, runs in timed.items()}
        for name, row in rows.items():
            row["fraction_of_peak"] = row["gflops_per_s"] / peak
            row["cost_over_no_adapters"] = rows["none"]["decisions_per_s"] / row["decisions_per_s"] - 1.0
            print(f"  {count:>4} agents, {name:<11}: {row['decisions_per_s']:6.2f} decisions/s  {row['processed_tokens_per_s']:7.0f} tokens/s  "
                  f"{row['fraction_of_peak']:6.1%} of peak  {row['cost_over_no_adapters']:+.1%} over no adapters", flush=True)
        result["deliberation"][count] = rows
        write_result(out, result)  # after each count: a run cut short keeps what it measured



if __name__ == "__main__":
    main()
