"""Kill a run with SIGKILL at random moments, resume it, and check it equals an uninterrupted run.

    .venv/bin/python scripts/kill_resume.py                       # 10 kills, scenarios/crash_test.toml
    .venv/bin/python scripts/kill_resume.py --kills 20 --scenario scenarios/base.toml

1. Runs the scenario once without interruption (the reference) and times it.
2. For each trial: starts the same scenario, sends SIGKILL after a random delay drawn over the
   reference's wall time (so kills land during model loading, deliberation, database commits,
   training phases and AED measurements), notes what the run was doing from its last output
   line, then resumes it (`run --resume`) to the end.
3. Compares every table of the resumed run with the reference (`analysis.compare`, timings
   excluded) and prints one line per trial and a summary. Exit code 0 only if all are identical.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.compare import compare_runs


def run_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "simulation", "run", *args, "--plain"]


def reference_run(scenario: str, out: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    subprocess.run(run_command([scenario, "--output-dir", str(out)]), cwd=ROOT, check=True, capture_output=True, text=True)
    return next(out.iterdir()), time.perf_counter() - started


def killed_run(scenario: str, out: Path, delay: float) -> tuple[Path | None, str]:
    """Start a run, SIGKILL it after `delay` seconds; (run dir or None, what it was doing)."""
    log = out.with_suffix(".log")
    with open(log, "w") as handle:
        process = subprocess.Popen(run_command([scenario, "--output-dir", str(out)]), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=delay)
            return None, "finished before the kill"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    progress = ("run:", "AED", "step", "  phase", "training phase", "  event")
    lines = [line for line in log.read_text().splitlines() if line.startswith(progress)]
    doing = _describe(lines[-1]) if lines else "loading the model (no run output yet)"
    run_dirs = list(out.iterdir()) if out.exists() else []
    return (run_dirs[0] if run_dirs else None), doing


def _describe(last_line: str) -> str:
    """What a run was doing, from the last progress line it printed before the kill."""
    if last_line.startswith("run:"):
        return "measuring AED at phase 0"
    if last_line.startswith("AED"):
        return f"deliberating after {last_line.split(':')[0]}"
    if last_line.startswith("step"):
        done = last_line.split()[1]
        return f"after step {done}: deliberating, committing, or training"
    if last_line.startswith("  phase"):
        return f"training ({last_line.split(':')[0].strip()} done)"
    if last_line.startswith("training phase"):
        return "measuring AED after a training phase"
    return last_line.strip()[:60]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/crash_test.toml")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--workdir", default=None, help="where runs go (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-resume-"))
    reference, seconds = reference_run(args.scenario, work / "reference")
    print(f"reference run: {seconds:.0f} s ({reference})")
    trials = []
    while len(trials) < args.kills:
        index = len(trials)
        delay = rng.uniform(0.5, seconds * 0.95)
        out = work / f"kill-{index:02d}"
        run_dir, doing = killed_run(args.scenario, out, delay)
        if run_dir is None:
            print(f"kill {index:2d} at {delay:5.1f} s: no run directory yet ({doing}); starting it again")
            subprocess.run(["rm", "-rf", str(out)], check=False)
            continue
        resumed = subprocess.run(run_command(["--resume", str(run_dir)]), check=False, cwd=ROOT, capture_output=True, text=True)
        if resumed.returncode != 0:
            detail = (resumed.stderr.strip().splitlines() or ["?"])[-1]
            trials.append({"delay_s": delay, "while": doing, "identical": False, "detail": f"resume failed: {detail}"})
        else:
            results = compare_runs(reference, run_dir)
            differing = [f"{r.table} ({r.detail})" for r in results if not r.identical]
            trials.append({"delay_s": delay, "while": doing, "identical": not differing, "detail": "; ".join(differing) or "all tables identical"})
        trial = trials[-1]
        print(f"kill {index:2d} at {delay:5.1f} s while: {trial['while']:<90} -> {'IDENTICAL' if trial['identical'] else 'DIFFERENT'} {'' if trial['identical'] else trial['detail']}")
    identical = sum(t["identical"] for t in trials)
    print(f"\n{len(trials)} kills, {identical} resumed runs identical to the uninterrupted run")
    (work / "kill_resume.json").write_text(json.dumps({"scenario": args.scenario, "reference_seconds": seconds, "trials": trials}, indent=2))
    return 0 if identical == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
