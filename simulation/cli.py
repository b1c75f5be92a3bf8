"""The command line: `python -m simulation run | validate | sweep | query | serve | report | compare | evaluate | keys`.

Mistakes in the user's input arrive here as `UserError`s and leave as one line on stderr with a
non-zero exit code and no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import sys

from core.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _run(args: argparse.Namespace) -> int:
    from simulation import run as runs

    runs.quiet_libraries()
    if args.resume:
        result = runs.resume(args.resume, plain=args.plain)
    elif args.scenario:
        result = runs.start(args.scenario, plain=args.plain, output_dir=args.output_dir, overrides=args.set)
    else:
        raise UserError(None, None, "nothing to run", "give a scenario file (python -m simulation run scenarios/base.toml) or --resume RUN_DIR")
    print(f"\nrun {result.status} in {result.seconds:.0f} s: {result.steps} steps")
    print(f"database: {result.database}")
    print(f"query it:  duckdb {result.database}   (or duckdb.connect(path, read_only=True) in Python)\n")
    print(runs.EXAMPLE_QUERIES)
    print(f"\nreport:   python -m simulation report {result.run_dir}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from agents.llm import resolve_source
    from simulation.run import load_data
    from simulation.scenario import load_scenario

    scenario = load_scenario(args.scenario, args.set)
    data, dates = load_data(scenario, args.scenario)
    config = scenario.model
    if config.backend == "openai":
        model = f"{config.model} at {config.base_url} (remote, constraint {config.constraint})"
    else:
        model = resolve_source(config.path, config.gguf_file).model_id
    groups = ", ".join(f"{g.name} x{g.count} ({'+'.join(g.categories)})" for g in scenario.agents.groups)
    print(f"{args.scenario}: ok")
    print(f"  {scenario.agents.n_agents} agents: {groups}")
    pace = f" (every {scenario.data.every}th trading date)" if scenario.data.every > 1 else ""
    print(f"  {scenario.run.steps} steps{pace} from {dates[0].date()} to {dates[scenario.run.steps - 1].date()} on {data.source}, assets {', '.join(scenario.data.assets or data.assets)}")
    training = f"{scenario.training.method} every {scenario.training.every} steps" if scenario.training.enabled else "off"
    print(f"  model {model}; training {training}; "
          f"AED {'on' if scenario.aed.enabled else 'off'}; {len(scenario.events)} events")
    return 0


def _report(args: argparse.Namespace) -> int:
    from analysis.report import main_report

    path = main_report(args.runs, args.out)
    print(f"report: {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from analysis.compare import compare_runs

    results = compare_runs(args.first, args.second)
    for result in results:
        print(f"{result.table:<16} rows {result.rows[0]:>7} vs {result.rows[1]:<7} {result.detail}")
    identical = sum(r.identical for r in results)
    print(f"{identical} of {len(results)} tables identical")
    return 0 if identical == len(results) else 1


def _evaluate(args: argparse.Namespace) -> int:
    from simulation.evaluate import evaluate
    from simulation.run import quiet_libraries

    quiet_libraries()
    result = evaluate(args.run, phase=args.phase, start=args.start, end=args.end, data_scenario=args.data, seeds=args.seeds,
                      every=args.every, impact=args.impact, allow_overlap=args.allow_overlap, progress=lambda line: print(line, flush=True))
    impact = f", market impact {args.impact} (prices are no longer the data's own)" if args.impact else ""
    print(f"evaluation of {result.days} decision days{' (IN-SAMPLE: dates the run traded on)' if result.in_sample else ''}{impact} in {result.seconds:.0f} s")
    print(f"database: {result.database}")
    print("  SELECT strategy, level, group_name, agent_id, metric, round(value, 4) AS value, round(ci_low, 4) AS low, round(ci_high, 4) AS high")
    print("  FROM eval_metrics WHERE metric IN ('corr', 'corr_expected', 'mean_pay', 'sharpe') AND level != 'agent' ORDER BY metric, strategy;")
    print(f"report:   python -m simulation report {args.run}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from simulation.sweep import run_sweep

    result = run_sweep(args.scenario, seeds=args.seeds, sets=args.set, name=args.name, output_dir=args.output_dir, address=args.address,
                       cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, plain=args.plain)
    print(f"\nsweep {result.folder}: {result.completed} of {result.runs} runs completed ({result.skipped} before this command) in {result.seconds:.0f} s")
    for key, error in result.failed.items():
        print(f"  failed: {key}: {error}")
    print(f"query it:  python -m simulation query \"SELECT seed, group_name, corr(expected_decision, realised_return) AS corr FROM decisions GROUP BY ALL ORDER BY ALL\" {result.folder}")
    print(f"report:    python -m simulation report {result.folder}")
    if result.failed:
        print(f"re-run the same command to try the {len(result.failed)} failed run(s) again; finished ones are skipped")
    return 1 if result.failed else 0


def _query(args: argparse.Namespace) -> int:
    from analysis.query import write_query

    print(write_query(args.sql, args.runs, args.out))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from simulation.run import quiet_libraries
    from simulation.serve import serve

    quiet_libraries()
    serve(args.run, phase=args.phase, host=args.host, port=args.port)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from simulation.reference import scenario_reference

    print(scenario_reference(), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m simulation", description="A market of heterogeneous, learning LLM investors. Every output goes to DuckDB.")
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a scenario (or resume a run)", description="Run a scenario file, or continue an interrupted run with --resume.")
    run.add_argument("scenario", nargs="?", help="scenario TOML file, e.g. scenarios/base.toml")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last committed step")
    run.add_argument("--plain", action="store_true", help="plain progress lines instead of the live console")
    run.add_argument("--output-dir", help="override run.output_dir")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario key, validated as if written in the file (dotted key, TOML value), e.g. --set training.trust=0.2 --set run.seed=3")
    run.set_defaults(handler=_run)
    validate = commands.add_parser("validate", help="check a scenario file without running it", description="Validate a scenario: schema, data, categories, model path.")
    validate.add_argument("scenario", help="scenario TOML file")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key, as for run")
    validate.set_defaults(handler=_validate)
    report = commands.add_parser("report", help="write an HTML report of one or more runs", description="Write a self-contained HTML report from run databases.")
    report.add_argument("runs", nargs="+", help="run directories, run.duckdb files or sweep folders; several are compared side by side")
    report.add_argument("--out", help="output HTML file (default: report.html beside the first run)")
    report.set_defaults(handler=_report)
    compare = commands.add_parser("compare", help="compare two runs table by table (timings excluded)")
    compare.add_argument("first", help="run directory or run.duckdb")
    compare.add_argument("second", help="run directory or run.duckdb")
    compare.set_defaults(handler=_compare)
    evaluate = commands.add_parser("evaluate", help="replay a run's trained agents on dates it never traded, beside baselines",
                                   description="Out-of-sample evaluation of a run's agents (frozen) against buy-and-hold, momentum, their own first factor and "
                                               "the untrained agents, with bootstrap intervals; writes <run>/evaluation.duckdb.")
    evaluate.add_argument("run", help="run directory (or run.duckdb)")
    evaluate.add_argument("--phase", type=int, help="the adapters of this training phase (default: the last; 0 = untrained)")
    evaluate.add_argument("--start", help="first evaluation date (default: the day after the run's last traded date)")
    evaluate.add_argument("--end", help="last evaluation date (default: the data's last)")
    evaluate.add_argument("--data", metavar="SCENARIO", help="evaluate on this scenario's data instead (e.g. the S&P 500 sample)")
    evaluate.add_argument("--seeds", type=int, default=1, help="evaluation passes, each with its own sampling seed (default 1)")
    evaluate.add_argument("--every", type=int, default=1, metavar="K", help="decide on every K-th trading date of the window only (default 1: every date); each decision is still paid by its next day's return")
    evaluate.add_argument("--impact", type=float, default=0.0, help="market impact during the evaluation (default 0: the data's own prices)")
    evaluate.add_argument("--allow-overlap", action="store_true", help="allow dates the run traded on (every figure is then marked in-sample)")
    evaluate.set_defaults(handler=_evaluate)
    sweep = commands.add_parser("sweep", help="run a scenario over seeds and a grid of settings, each combination one run on Ray",
                                description="Seeds x a grid of --set values; each combination is one run (a Ray task) with its own DuckDB under "
                                            "<output_dir>/sweeps/<name>/runs/. Re-run the same command to resume: finished runs are skipped.")
    sweep.add_argument("scenario", help="scenario TOML file")
    sweep.add_argument("--seeds", default="0", help="master seeds: 0-5, 0,2,4 or 0-2,7 (default 0)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                       help="sweep a key over values (KEY=V1,V2), or set one value for all runs (KEY=V); validated as if written in the file")
    sweep.add_argument("--name", help="the sweep's name and folder (default: the scenario file's name)")
    sweep.add_argument("--output-dir", help="folder for sweeps/<name> (default: the scenario's run.output_dir)")
    sweep.add_argument("--address", help="an existing Ray cluster (auto, or HOST:PORT); default: a local Ray started for the sweep")
    sweep.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs (and torch threads) per run (default 1: as many runs at once as cores)")
    sweep.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs per run; fractions share a GPU (default 0)")
    sweep.add_argument("--plain", action="store_true", help="plain progress lines instead of the live console")
    sweep.set_defaults(handler=_sweep)
    query = commands.add_parser("query", help="one SQL query over runs and sweeps (every table a view with run_id and the settings)",
                                description="Attach run databases read-only and run SQL over all of them. Each table is a view over every run, "
                                            "with run_id, seed and the swept settings as columns; the view `runs` lists the runs.")
    query.add_argument("sql", help='e.g. "SELECT seed, group_name, corr(decision_depth, realised_return) FROM decisions GROUP BY ALL"')
    query.add_argument("runs", nargs="+", help="run folders, run.duckdb files or sweep folders")
    query.add_argument("--out", help="write the result to a .csv or .parquet file instead of printing it")
    query.set_defaults(handler=_query)
    serve = commands.add_parser("serve", help="serve a run's agents as OpenAI-compatible models (agent-0, agent-1, ...)",
                                description="An OpenAI-compatible server (chat completions, models) for the agents of a finished or running run: "
                                            "each agent-N is the base model with agent N's adapter from phase K. See docs/backends.md.")
    serve.add_argument("run", help="run directory (or run.duckdb)")
    serve.add_argument("--phase", type=int, help="the adapters of this training phase (default: the last; 0 = untrained)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.set_defaults(handler=_serve)
    keys = commands.add_parser("keys", help="print the scenario reference (every key, default and range)")
    keys.set_defaults(handler=_keys)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        target = getattr(args, "resume", None) or "RUN_DIR"
        print(f"\ninterrupted; every committed step is kept. Continue with: python -m simulation run --resume {target}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        # The Mesa model and its agents form reference cycles that hold the DuckDB connection;
        # collect them now, not during interpreter shutdown, where DuckDB's bindings complain.
        gc.collect()
