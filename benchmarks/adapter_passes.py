"""Where the stacked adapters' cost goes: the prompt pass against a decoding step, and the bytes a step reads.

`benchmarks/agents_at_scale.py` times whole deliberations. This splits one into its two kinds of
pass, at N agents with one prompt (one row) each, timed with no adapters and with the stacked
layer of `agents/lora.py` (random B, so no row can skip its LoRA term; on a CPU where the decoding
kernel of `agents/lora_kernel.py` is built, also with it switched off, `stacked_bmm`):

- the **prompt pass**: every prompt token of every row at once;
- a **decoding step**: one token per row on the key/value cache, which reads every weight of
  the model once (the belief's tokens are written this way, 16 steps in a deliberation).

For a decoding step it also counts the bytes of weights the step must read: the model's (its
dtype; the tied LM head once) and the stacks of the rows' agents (in the model's dtype; float32
on the bmm path of a CPU, which computes a decoding step's LoRA term from the float32 masters),
and measures the machine's read rate (a sum over a 512 MB float32 tensor). A decoding step that
is bound by memory costs about its bytes over that rate, whatever the arithmetic.

The ways are interleaved `--repeats` times and the median is reported.

    python -m benchmarks.adapter_passes                   # SmolLM2-135M, 8 and 32 agents
    python -m benchmarks.adapter_passes --agents 8 32 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from agents.lora_kernel import decoding_path
from benchmarks.agents_at_scale import (
    add_model_arguments,
    dense_parameters,
    kernel_switched,
    load,
    prompts,
    randomise_adapters,
    synchronise,
)
from benchmarks.results_file import RESULTS_DIR, write_result
from core.provenance import provenance
from training.config import TrainingConfig
from training.phase import lora_spec


def read_rate(device: torch.device, megabytes: int = 512, repeats: int = 5) -> float:
    """GB/s of a plain sum over a float32 tensor larger than any cache: what a memory-bound pass can hope for."""
    data = torch.ones(megabytes * 2**20 // 4, device=device)
    data.sum()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(repeats):
        data.sum()
    synchronise(device)
    return megabytes * 2**20 * repeats / (time.perf_counter() - started) / 1e9


def passes(llm, texts: list[str], agents: list[int] | None, steps: int, keep_hidden: bool = False) -> dict:
    """Seconds of one prompt pass over every row, and the mean of `steps` decoding steps after it
    (each feeds every row the first prompt's last token). `keep_hidden`: also the last step's hidden states."""
    encoded = llm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = encoded.attention_mask.to(llm.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        synchronise(llm.device)
        started = time.perf_counter()
        _, cache = llm.run(encoded.input_ids.to(llm.device), mask, positions, rows=agents)
        synchronise(llm.device)
        prompt_seconds = time.perf_counter() - started
        token = torch.full((len(texts), 1), int(encoded.input_ids[0, -1]), device=llm.device)
        step_seconds = []
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = mask.sum(-1, keepdim=True) - 1
            started = time.perf_counter()
            hidden, cache = llm.run(token, mask, positions, cache=cache, rows=agents)
            synchronise(llm.device)
            step_seconds.append(time.perf_counter() - started)
    timings = {"prompt_pass_s": prompt_seconds, "decoding_step_s": statistics.fmean(step_seconds), "prompt_tokens": int(encoded.attention_mask.sum())}
    return timings | ({"hidden": hidden} if keep_hidden else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--agents", type=int, nargs="+", default=[8, 32], help="agent counts (one row each)")
    parser.add_argument("--steps", type=int, default=16, help="decoding steps timed after each prompt pass")
    parser.add_argument("--repeats", type=int, default=5, help="timings per way and agent count (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    llm = load(args)
    spec = lora_spec(TrainingConfig(), llm.layer_count)
    element = torch.finfo(llm.dtype).bits // 8
    decoding = decoding_path(llm.device)
    stacked_ways = ("stacked", "stacked_bmm") if decoding == "kernel" else ("stacked",)
    # a decoding step reads the stacks in the model's dtype, but the bmm path on a CPU the float32 masters
    stack_element = {"stacked": 4 if llm.device.type == "cpu" and decoding == "bmm" else element, "stacked_bmm": 4}
    model_bytes = (dense_parameters(llm) + llm.hidden_size * llm.model.config.vocab_size) * element
    result = {"provenance": provenance(), "settings": vars(args) | {"out": str(args.out) if args.out else None}, "model": llm.source.model_id,
              "device": str(llm.device), "dtype": str(llm.dtype), "threads": torch.get_num_threads(), "lora": spec.__dict__,
              "read_rate_gb_s": read_rate(llm.device), "model_bytes_per_step": model_bytes, "lora_decoding": decoding, "agents": {}}
    out = args.out or RESULTS_DIR / f"adapter-passes-{llm.device.type}.json"
    print(f"{result['model']} on {result['device']} ({result['dtype']}): reads {result['read_rate_gb_s']:.1f} GB/s; "
          f"a decoding step reads {model_bytes / 1e6:.0f} MB of model weights", flush=True)
    passes(llm, prompts(llm, 2, args.seed), None, 2)  # warm-up
    for count in args.agents:
        texts, rows = prompts(llm, count, args.seed), list(range(count))
        timed: dict[str, list[dict]] = {"none": []}
        for _ in range(args.repeats):  # interleaved, so a drift of the machine reaches every way
            timed["none"].append(passes(llm, texts, None, args.steps))
            for way in stacked_ways:
                llm.attach_adapters(count, spec)
                randomise_adapters(llm, args.seed)
                adapter_params = sum(param.numel() for param in llm.adapters.parameters())
                with kernel_switched(way == "stacked"):
                    timed.setdefault(way, []).append(passes(llm, texts, rows, args.steps))
                llm.detach_adapters()
        row = {way: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for way, runs in timed.items()}
        for way in stacked_ways:
            adapter_bytes = adapter_params * stack_element[way]
            row[way] |= {"adapter_bytes_per_step": adapter_bytes, "adapter_bytes_over_model_bytes": adapter_bytes / model_bytes,
                         "decoding_step_added_s": row[way]["decoding_step_s"] - row["none"]["decoding_step_s"]}
            for key in ("prompt_pass_s", "decoding_step_s"):
                row[way][f"{key}_over_none"] = row[way][key] / row["none"][key] - 1.0
            print(f"  {count:>4} agents, {way:<11}: prompt pass {row['none']['prompt_pass_s']:.3f} s -> {row[way]['prompt_pass_s']:.3f} s "
                  f"({row[way]['prompt_pass_s_over_none']:+.1%}); decoding step {row['none']['decoding_step_s'] * 1e3:.1f} ms -> "
                  f"{row[way]['decoding_step_s'] * 1e3:.1f} ms ({row[way]['decoding_step_s_over_none']:+.1%}); the adapters add "
                  f"{adapter_bytes / 1e6:.0f} MB to a step's {model_bytes / 1e6:.0f} MB ({adapter_bytes / model_bytes:.0%}), "
                  f"{adapter_bytes / 1e9 / result['read_rate_gb_s'] * 1e3:.1f} ms at the read rate", flush=True)
        result["agents"][count] = row
        write_result(out, result)


if __name__ == "__main__":
    main()
