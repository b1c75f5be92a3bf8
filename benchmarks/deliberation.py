"""Deliberation throughput: batched vs one agent at a time, against the machine's matmul peak.

    python benchmarks/deliberation.py                  # SmolLM2 (packaged), base-scenario prompts
    python benchmarks/deliberation.py --agents 16 --repeats 3 --model ~/llm/Qwen2.5-1.5B-Instruct

One run measures, on the same machine and model:
- the dense matmul peak of the model's dtype (and of bf16/fp32 for reference): a square GEMM;
- deliberation of N agents' real prompts, all in one batch and then one agent at a time:
  decisions/s, generated tokens/s, and the model FLOPs they imply, as a fraction of that peak.
FLOPs are counted as 2 x (non-embedding parameters + LM head) per processed token (prompt and
generated), plus attention's 4 x layers x hidden x context per token; the KV cache is assumed.
Results print as a table and go to benchmarks/results/deliberation-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from agents.llm import LLM
from simulation.config import load_scenario
from simulation.run import load_data
from simulation.model import MarketModel
from simulation.store import RunStore


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Achieved GFLOP/s of a square GEMM: the practical peak this machine gives this dtype."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_flops(llm: LLM, prompt_tokens: int, generated_tokens: int, sequences: int) -> float:
    config = llm.model.config
    dense = sum(p.numel() for name, p in llm.model.named_parameters() if "embed" not in name) + config.vocab_size * config.hidden_size
    layers, hidden = config.num_hidden_layers, config.hidden_size
    per_sequence_prompt = prompt_tokens / sequences
    attention = 4 * layers * hidden * (per_sequence_prompt * per_sequence_prompt / 2 + generated_tokens * (per_sequence_prompt + generated_tokens / sequences / 2))
    return 2 * dense * (prompt_tokens + generated_tokens) + attention


def scenario_prompts(scenario_path: str, agents: int) -> tuple[list[str], list[float], LLM]:
    """Real step-0 prompts of the scenario's agents (repeated to `agents` rows)."""
    scenario = load_scenario(scenario_path)
    data, dates = load_data(scenario, scenario_path)
    llm = LLM.load(scenario.model.path, scenario.model.gguf_file, scenario.model.device, scenario.model.dtype)
    store = RunStore(Path("/tmp") / f"bench-{time.time_ns()}.duckdb")
    model = MarketModel(scenario, data, dates, store, llm)
    observations = model.gather_factors(0, dates[0], news={})
    prompts = [llm.chat_prompt(o.system, o.user) for o in observations]
    temperatures = [model.investors[o.agent_id].spec.temperature for o in observations]
    store.close()
    Path(store.path).unlink(missing_ok=True)
    reps = -(-agents // len(prompts))
    return (prompts * reps)[:agents], (temperatures * reps)[:agents], llm


def measure(llm: LLM, prompts: list[str], temperatures: list[float], batch_size: int, belief_tokens: int, repeats: int) -> dict:
    best = None
    for repeat in range(repeats):
        _sync(llm.device)
        started = time.perf_counter()
        completions = llm.generate(prompts, temperatures, belief_tokens=belief_tokens, batch_size=batch_size, seed=repeat)
        _sync(llm.device)
        seconds = time.perf_counter() - started
        if best is None or seconds < best[0]:
            best = (seconds, completions)
    seconds, completions = best
    generated = sum(len(c.completion_ids) for c in completions)
    prompt_tokens = sum(len(c.prompt_ids) for c in completions)
    flops = model_flops(llm, prompt_tokens, generated, len(completions))
    return {"batch_size": batch_size, "seconds": seconds, "decisions_per_s": len(completions) / seconds,
            "generated_tokens_per_s": generated / seconds, "processed_tokens_per_s": (generated + prompt_tokens) / seconds,
            "gflops_per_s": flops / seconds / 1e9, "prompt_tokens": prompt_tokens, "generated_tokens": generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/base.toml")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--belief-tokens", type=int, default=None)
    args = parser.parse_args()

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    prompts, temperatures, llm = scenario_prompts(args.scenario, args.agents)
    belief_tokens = args.belief_tokens or load_scenario(args.scenario).model.belief_tokens
    peaks = {str(dtype).removeprefix("torch."): matmul_peak(dtype, llm.device) for dtype in (torch.float32, torch.bfloat16)}
    own_peak = peaks[str(llm.dtype).removeprefix("torch.")]
    measure(llm, prompts[:2], temperatures[:2], 2, belief_tokens, 1)  # warm-up
    batched = measure(llm, prompts, temperatures, len(prompts), belief_tokens, args.repeats)
    sequential = measure(llm, prompts, temperatures, 1, belief_tokens, args.repeats)
    for row in (batched, sequential):
        row["fraction_of_peak"] = row["gflops_per_s"] / own_peak
    result = {"device": str(llm.device), "dtype": str(llm.dtype), "model": llm.source.model_id, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "agents": len(prompts), "belief_tokens": belief_tokens,
              "matmul_peak_gflops": peaks, "batched": batched, "one_at_a_time": sequential,
              "batching_speedup": batched["decisions_per_s"] / sequential["decisions_per_s"]}
    print(f"model {result['model']} on {result['device']} ({result['dtype']}, {result['threads']} threads), {len(prompts)} agents, belief <= {belief_tokens} tokens")
    print("matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"{'mode':<16}{'decisions/s':>12}{'gen tok/s':>11}{'all tok/s':>11}{'GFLOP/s':>9}{'of peak':>9}")
    for name, row in (("batched", batched), ("one at a time", sequential)):
        print(f"{name:<16}{row['decisions_per_s']:>12.2f}{row['generated_tokens_per_s']:>11.1f}{row['processed_tokens_per_s']:>11.1f}{row['gflops_per_s']:>9.1f}{row['fraction_of_peak']:>9.1%}")
    print(f"batching speed-up: {result['batching_speedup']:.2f}x")
    out = Path(__file__).parent / "results" / f"deliberation-{llm.device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
