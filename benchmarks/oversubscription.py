"""Oversubscription probe: what torch processes that share the cores do to each other's speed.

Each process loads the packaged SmolLM2-135M, waits at a barrier until all have loaded, then
times `repeats` forward passes over a batch like one trading step's prefill (`batch` prompts of
`tokens` tokens). Layouts, all on the same machine back to back:

- 1 process  x all threads        (one run at a time, the default `simulation run`)
- N processes x all threads each  (oversubscribed: what two plain `simulation run`s in two shells do)
- N processes x 1 thread each     (what `simulation sweep --cpus-per-run 1` does)

with N the machine's core count. Reported: seconds per pass in each process, and the machine's
throughput in passes per second, against the single process.

    python -m benchmarks.oversubscription --out benchmarks/results/oversubscription-cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_file import RESULTS_DIR, write_result
from core.parallel import cpu_count
from core.provenance import provenance

WORKER = """
import json, sys, time
from pathlib import Path
import torch
threads, batch, tokens, repeats, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
torch.set_num_threads(threads)
from agents.llm import LLM
llm = LLM.load("packaged")
ids = torch.randint(100, 20000, (batch, tokens), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    llm.model(input_ids=ids)  # warm-up
    (folder / f"ready-{sys.argv[6]}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    started = time.perf_counter()
    for _ in range(repeats):
        llm.model(input_ids=ids)
print(json.dumps({"seconds_per_pass": (time.perf_counter() - started) / repeats}))
"""


def layout(processes: int, threads: int, args) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        children = [subprocess.Popen([sys.executable, "-c", WORKER, str(threads), str(args.batch), str(args.tokens), str(args.repeats), folder, str(index)],
                                     stdout=subprocess.PIPE, text=True) for index in range(processes)]
        while len(list(Path(folder).glob("ready-*"))) < processes:
            if any(child.poll() is not None for child in children):
                raise SystemExit("a worker died while loading")
            time.sleep(0.05)
        (Path(folder) / "go").touch()
        per_pass = [json.loads(child.communicate()[0].strip().splitlines()[-1])["seconds_per_pass"] for child in children]
    return {"processes": processes, "threads_each": threads, "seconds_per_pass": [round(value, 4) for value in per_pass],
            "passes_per_second": round(sum(1 / value for value in per_pass), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=6, help="prompts per pass (default 6: base.toml's agents)")
    parser.add_argument("--tokens", type=int, default=320, help="tokens per prompt (default 320)")
    parser.add_argument("--repeats", type=int, default=8, help="timed passes per process")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "oversubscription-cpu.json")
    args = parser.parse_args()
    cores = cpu_count()
    recorded = provenance()
    layouts = [layout(1, cores, args), layout(cores, cores, args), layout(cores, 1, args), layout(1, 1, args)]
    single = layouts[0]["passes_per_second"]
    for row in layouts:
        row["throughput_vs_one_process"] = round(row["passes_per_second"] / single, 3)
        print(f"{row['processes']} process(es) x {row['threads_each']} thread(s): {row['seconds_per_pass']} s per pass, "
              f"{row['passes_per_second']} passes/s ({row['throughput_vs_one_process']:.2f}x one process)")
    write_result(args.out, {"settings": {"batch": args.batch, "tokens": args.tokens, "repeats": args.repeats, "cores": cores},
                            "provenance": recorded, "layouts": layouts})


if __name__ == "__main__":
    main()
