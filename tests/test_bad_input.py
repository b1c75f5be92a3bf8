"""The bad-input corpus: every mistake is one line naming the file, the key and the fix.

Each case writes a scenario (and, where needed, a data file or a fake model) and runs the real
command line in-process: `python -m simulation run FILE`. It must exit 2, print exactly one line
on stderr that names the file and the key or column, carry a fix, show no traceback, and leave
no run directory behind (so no run can be marked complete).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simulation.cli import EXIT_USER_ERROR, main

GROUP = '[[agents.groups]]\nname = "a"\ncategories = ["technical"]\n'
VALID_CSV = "date,asset,close,technical.momentum_5d\n2020-01-01,X,100,0.1\n2020-01-02,X,101,0.2\n2020-01-03,X,102,0.3\n2020-01-06,X,101,0.1\n"


def _file_scenario(data_file: str, steps: int = 2, group: str = GROUP) -> str:
    return f'[run]\nsteps = {steps}\n[data]\nsource = "file"\npath = "{data_file}"\n{group}'


# (case id, scenario text, files to create {name: text}, the key or column the message must name)
SCENARIO_CASES = [
    ("toml-syntax", "[run\nsteps = 3\n", {}, "TOML syntax"),
    ("toml-bad-value", "[run]\nsteps = three\n", {}, "TOML syntax"),
    ("unknown-section", f"[runn]\nsteps = 3\n{GROUP}", {}, "runn"),
    ("unknown-run-key", f"[run]\nstepz = 3\n{GROUP}", {}, "run.stepz"),
    ("unknown-group-key", '[[agents.groups]]\nname = "a"\ncategories = ["technical"]\noptimizm = 0.5\n', {}, "agents.groups[0].optimizm"),
    ("steps-wrong-type", f'[run]\nsteps = "ten"\n{GROUP}', {}, "run.steps"),
    ("categories-not-a-list", '[[agents.groups]]\nname = "a"\ncategories = "technical"\n', {}, "agents.groups[0].categories"),
    ("optimism-out-of-range", f'{GROUP}optimism = 1.5\n', {}, "agents.groups[0].optimism"),
    ("temperature-negative", f'{GROUP}temperature = -1.0\n', {}, "agents.groups[0].temperature"),
    ("count-zero", f'{GROUP}count = 0\n', {}, "agents.groups[0].count"),
    ("steps-zero", f"[run]\nsteps = 0\n{GROUP}", {}, "run.steps"),
    ("seed-negative", f"[run]\nseed = -4\n{GROUP}", {}, "run.seed"),
    ("name-with-slash", f'[run]\nname = "a/b"\n{GROUP}', {}, "run.name"),
    ("impact-too-large", f"[market]\nimpact = 2.0\n{GROUP}", {}, "market.impact"),
    ("initial-price-zero", f"[market]\ninitial_price = 0\n{GROUP}", {}, "market.initial_price"),
    ("device-unknown", f'[model]\ndevice = "tpu"\n{GROUP}', {}, "model.device"),
    ("dtype-unknown", f'[model]\ndtype = "int8"\n{GROUP}', {}, "model.dtype"),
    ("training-every-zero", f"[training]\nevery = 0\n{GROUP}", {}, "training.every"),
    ("removed-training-key", f'[training]\nalgorithm = "hindsight_grpo"\n{GROUP}', {}, "training.algorithm"),
    ("removed-expected-sign", f"[training]\nexpected_sign = true\n{GROUP}", {}, "training.expected_sign"),
    ("payoff-key-moved-to-market", f'[training]\nreward = "linear"\n{GROUP}', {}, "training.reward"),
    ("training-holdout-one", f"[training]\nholdout = 1.0\n{GROUP}", {}, "training.holdout"),
    ("unknown-lora-module", f'[training]\ntarget_modules = ["qproj"]\n{GROUP}', {}, "training.target_modules"),
    ("reward-unknown", f'[market]\nreward = "sharpe"\n{GROUP}', {}, "market.reward"),
    ("aed-probes-zero", f"[aed]\nprobes = 0\n{GROUP}", {}, "aed.probes"),
    ("no-agents", "[run]\nsteps = 3\n", {}, "agents"),
    ("empty-groups", "[agents]\ngroups = []\n", {}, "agents.groups"),
    ("group-without-categories", '[[agents.groups]]\nname = "a"\n', {}, "agents.groups[0].categories"),
    ("unknown-category", '[[agents.groups]]\nname = "a"\ncategories = ["astrology"]\n', {}, "agents.groups[0].categories"),
    ("category-twice", '[[agents.groups]]\nname = "a"\ncategories = ["macro", "macro"]\n', {}, "agents.groups[0].categories"),
    ("duplicate-group-names", GROUP + GROUP, {}, "agents.groups"),
    ("event-after-last-step", f'[run]\nsteps = 5\n{GROUP}[[events]]\nkind = "shock"\nstep = 9\nvalue = -0.1\n', {}, "events[0].step"),
    ("event-kind-unknown", f'{GROUP}[[events]]\nkind = "meteor"\nstep = 1\n', {}, "events[0]"),
    ("news-without-text", f'{GROUP}[[events]]\nkind = "news"\nstep = 1\ncategory = "macro"\n', {}, "events[0].text"),
    ("shock-out-of-range", f'{GROUP}[[events]]\nkind = "shock"\nstep = 1\nvalue = -2.0\n', {}, "events[0].value"),
    ("data-source-unknown", f'[data]\nsource = "yahoo"\n{GROUP}', {}, "data.source"),
    ("file-source-without-path", f'[data]\nsource = "file"\n{GROUP}', {}, "data"),
    ("signal-too-strong", f"[data.synthetic]\nsignal = {{ technical = 0.8, macro = 0.8 }}\n{GROUP}", {}, "data.synthetic.signal"),
    ("signal-unknown-category", f"[data.synthetic]\nsignal = {{ vibes = 0.2 }}\n{GROUP}", {}, "data.synthetic.signal"),
    ("too-many-steps-for-data", f"[run]\nsteps = 500\n[data.synthetic]\nn_days = 30\n{GROUP}", {}, "run.steps"),
    ("asset-not-in-data", f'[data]\nassets = ["AAPL"]\n{GROUP}', {}, "data.assets"),
    ("category-the-data-lacks", _file_scenario("d.csv", group='[[agents.groups]]\nname = "a"\ncategories = ["fundamental"]\n'), {"d.csv": VALID_CSV}, "agents.groups[0].categories"),
    # data files
    ("data-file-missing", _file_scenario("nope.csv"), {}, "data.path"),
    ("data-missing-close", _file_scenario("d.csv"), {"d.csv": "date,asset,technical.m\n2020-01-01,X,0.1\n"}, "close"),
    ("data-nan", _file_scenario("d.csv"), {"d.csv": "date,asset,close,technical.m\n2020-01-01,X,100,\n2020-01-02,X,101,0.2\n"}, "technical.m"),
    ("data-duplicate-date", _file_scenario("d.csv"), {"d.csv": "date,asset,close,technical.m\n2020-01-01,X,100,0.1\n2020-01-01,X,101,0.2\n"}, "2020-01-01"),
    ("data-unsorted-dates", _file_scenario("d.csv"), {"d.csv": "date,asset,close,technical.m\n2020-01-02,X,100,0.1\n2020-01-01,X,101,0.2\n"}, "date"),
    ("data-non-numeric", _file_scenario("d.csv"), {"d.csv": "date,asset,close,technical.m\n2020-01-01,X,abc,0.1\n"}, "close"),
    ("data-empty-file", _file_scenario("d.csv"), {"d.csv": ""}, "d.csv"),
    ("data-header-only", _file_scenario("d.csv"), {"d.csv": "date,asset,close,technical.m\n"}, "d.csv"),
    ("data-bad-factor-column", _file_scenario("d.csv"), {"d.csv": "date,asset,close,momentum\n2020-01-01,X,100,0.1\n"}, "momentum"),
    ("data-wrong-extension", _file_scenario("d.xlsx"), {"d.xlsx": "x"}, "d.xlsx"),
    # model paths
    ("model-path-missing", f'[model]\npath = "@TMP@/no/such/model"\n{GROUP}', {}, "model.path"),
    ("model-folder-not-a-model", f'[model]\npath = "@TMP@/emptydir"\n{GROUP}', {"emptydir/readme.txt": "hello"}, "model.path"),
    ("model-file-not-gguf", f'[model]\npath = "@TMP@/weights.bin"\n{GROUP}', {"weights.bin": "0000"}, "model.path"),
    ("model-corrupt-gguf", f'[model]\npath = "@TMP@/broken.gguf"\n{GROUP}', {"broken.gguf": "this is not a gguf file"}, "model.path"),
    ("model-two-ggufs", f'[model]\npath = "@TMP@/two"\n{GROUP}', {"two/a.gguf": "x", "two/b.gguf": "y"}, "model.gguf_file"),
    ("model-gguf-file-missing", f'[model]\npath = "@TMP@/one"\ngguf_file = "c.gguf"\n{GROUP}', {"one/a.gguf": "x"}, "model.gguf_file"),
]


def _materialise(tmp_path: Path, text: str, files: dict[str, str]) -> Path:
    """Write the case's files and its scenario (runs go under tmp_path/runs); @TMP@ = tmp_path."""
    for name, content in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    text = text.replace("@TMP@", str(tmp_path))
    output = f'output_dir = "{tmp_path / "runs"}"\n'
    text = text.replace("[run]\n", "[run]\n" + output, 1) if "[run]\n" in text else "[run]\n" + output + text
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(text)
    return scenario


@pytest.mark.parametrize("case, text, files, key", SCENARIO_CASES, ids=[c[0] for c in SCENARIO_CASES])
def test_bad_input_gives_one_line_naming_file_key_and_fix(case, text, files, key, tmp_path, capsys):
    scenario = _materialise(tmp_path, text, files)
    code = main(["run", str(scenario), "--plain"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert key in err, f"{case}: {err}"
    assert "fix:" in err
    named_file = next((n for n in files if n in err), None) or str(scenario)
    assert str(tmp_path) in err or named_file in err, err  # names the file at fault
    assert not (tmp_path / "runs").exists()  # nothing was started, so nothing is marked complete


def test_missing_scenario_file_is_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path / "absent.toml")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert "absent.toml" in err and "file not found" in err and len(err.splitlines()) == 1


def test_non_utf8_scenario_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin.toml"
    path.write_bytes(b"[run]\nname = \"caf\xe9\"\n")
    assert main(["validate", str(path)]) == EXIT_USER_ERROR
    assert "UTF-8" in capsys.readouterr().err


def test_resume_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert "no run database" in err and len(err.splitlines()) == 1


def test_the_real_entry_point_exits_non_zero_without_traceback(tmp_path):
    scenario = tmp_path / "bad.toml"
    scenario.write_text(textwrap.dedent(f"""
        [run]
        steps = 3
        {GROUP}
        risk_preference = 7
    """))
    process = subprocess.run([sys.executable, "-m", "simulation", "run", str(scenario)], check=False, capture_output=True, text=True, timeout=120)
    assert process.returncode == EXIT_USER_ERROR
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines() == [process.stderr.strip()]
    assert "agents.groups[0].risk_preference" in process.stderr and str(scenario) in process.stderr


# (case id, --set pairs, the key the message must name)
OVERRIDE_CASES = [
    ("unknown-key", ["run.stepz=3"], "run.stepz"),
    ("wrong-type", ["run.steps=ten"], "run.steps"),
    ("out-of-range", ["run.steps=0"], "run.steps"),
    ("removed-training-key", ["training.expected_sign=true"], "training.expected_sign"),
    ("no-equals-sign", ["run.steps"], "run.steps"),
]


@pytest.mark.parametrize("case, pairs, key", OVERRIDE_CASES, ids=[c[0] for c in OVERRIDE_CASES])
def test_a_bad_override_gives_one_line_before_anything_starts(case, pairs, key, tmp_path, capsys):
    scenario = _materialise(tmp_path, f"[run]\nsteps = 3\n{GROUP}", {})
    code = main(["run", str(scenario), "--plain", *[part for pair in pairs for part in ("--set", pair)]])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "fix:" in err, err
    assert key in err, f"{case}: {err}"
    assert not (tmp_path / "runs").exists()
