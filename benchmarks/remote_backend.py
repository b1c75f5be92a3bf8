"""Remote-backend benchmark: scenarios/base.toml in-process, then against `python -m simulation serve`.

Back to back on one machine, the same scenario (training, AED and events off, `--steps` steps): first the
in-process backend (one batched pass for the step's agents), then the OpenAI-compatible backend
asking `simulation serve` (a separate process serving a finished run's agents at phase 0, so the
same untrained weights; it answers one request at a time). Reported per backend: decisions per
second and completion tokens per second over the committed steps (the `steps` table), and the
share of fallbacks.

    python -m benchmarks.remote_backend --run runs/sweeps/base-one-at-a-time/runs/000_seed0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from benchmarks.results_file import RESULTS_DIR, write_result
from core.provenance import provenance
from simulation.run import quiet_libraries, start
from simulation.serve import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent


def _figures(database: Path) -> dict:
    with duckdb.connect(str(database), read_only=True) as con:
        decisions, tokens, seconds = con.execute("SELECT sum(decisions), sum(completion_tokens), sum(wall_seconds) FROM steps").fetchone()
        fallbacks = con.execute("SELECT avg(fallback::DOUBLE) FROM decisions").fetchone()[0]
    return {"decisions": int(decisions), "seconds": round(seconds, 2), "decisions_per_second": round(decisions / seconds, 3),
            "completion_tokens_per_second": round(tokens / seconds, 2), "fallback_share": fallbacks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run of scenarios/base.toml whose agents simulation serve answers for")
    parser.add_argument("--scenario", default="scenarios/base.toml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "remote-backend-cpu.json")
    args = parser.parse_args()
    quiet_libraries()
    recorded = provenance()
    common = [f"run.steps={args.steps}", "training.enabled=false", "aed.enabled=false", "events=[]"]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        local = start(args.scenario, plain=True, output_dir=folder, overrides=[*common, "run.name=in-process"])
        results["in_process"] = _figures(local.database)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "simulation", "serve", args.run, "--phase", "0", "--port", str(port)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/v1/models", server, seconds=300)
            remote = start(args.scenario, plain=True, output_dir=folder, overrides=[
                *common, "run.name=remote", "model.backend=openai", f"model.base_url=http://127.0.0.1:{port}/v1",
                "model.model=agent-{agent_id}", "model.constraint=decision_slot"])
            results["simulation_serve"] = _figures(remote.database)
        finally:
            server.terminate()
            server.wait(timeout=30)
    results["remote_over_in_process"] = round(results["simulation_serve"]["decisions_per_second"] / results["in_process"]["decisions_per_second"], 3)
    for name in ("in_process", "simulation_serve"):
        figures = results[name]
        print(f"{name:>16}: {figures['decisions_per_second']:.3f} decisions/s, {figures['completion_tokens_per_second']:.1f} tokens/s, "
              f"fallbacks {100 * figures['fallback_share']:.1f} %")
    print(f"remote / in-process: {results['remote_over_in_process']:.2f}x")
    write_result(args.out, {"settings": {"scenario": args.scenario, "steps": args.steps, "served_run": args.run, "overrides": common},
                            "provenance": recorded, "results": results})


if __name__ == "__main__":
    main()
