"""The OpenAI-compatible backend and `simulation serve`, against real servers on localhost.

Three kinds of server, each started by its test and stopped after it: `python -m simulation serve`
on a run of the tiny model; `transformers serve`, an independent server from the package index;
and a scripted FastAPI server (real HTTP, on uvicorn) that answers slowly, malformed, or dies.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import duckdb
import pytest
from fastapi import Request
from helpers import tiny_scenario

from agents.remote import parse_answer
from core.errors import ScenarioError, UserError
from simulation.run import resume, start
from simulation.scenario import load_scenario
from simulation.serve import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-never-stored-7f3a9c"


def remote_scenario(folder: Path, model_dir: Path, base_url: str, *, model: str = "agent-{agent_id}", constraint: str = "decision_slot",
                    steps: int = 3, extra_model: str = "", training: bool = False) -> Path:
    """The tiny scenario with its [model] pointed at a server."""
    folder.mkdir(parents=True, exist_ok=True)
    path = tiny_scenario(folder, model_dir, steps=steps, training=training, every=2)
    text = path.read_text().replace(f'path = "{model_dir}"', f'backend = "openai"\nbase_url = "{base_url}"\nmodel = "{model}"\n'
                                    f'constraint = "{constraint}"\napi_key_env = "LLM_MARKET_SIM_TEST_KEY"\n{extra_model}')
    path.write_text(text)
    return path


# --- parsing and configuration ------------------------------------------------------------------

@pytest.mark.parametrize("text, decision, problem", [
    ('{"belief": "Up on strong value.", "decision_depth": 4}', 4.0, None),
    ('Sure! {"belief": "Down.", "decision_depth": -10} hope that helps', -10.0, None),
    ("Prices look weak.\nDecision: -3", -3.0, None),
    ('{"belief": "Up", "decision_depth": 42}', None, "out_of_range"),
    ("I think it goes up.", None, "non_numeric"),
    ('{"belief": "Up", "decision_depth": ', None, "non_numeric"),
    ("", None, "empty"),
])
def test_answers_are_parsed_robustly(text, decision, problem):
    parsed = parse_answer(text)
    assert (parsed.decision, parsed.problem) == (decision, problem)


def test_the_remote_keys_are_checked_with_the_scenario(tmp_path, tiny_model_dir):
    scenario = tiny_scenario(tmp_path, tiny_model_dir)
    with pytest.raises(ScenarioError, match="model.base_url.*needs it"):
        load_scenario(scenario, ["model.backend='openai'", "model.model='m'"])
    with pytest.raises(ScenarioError, match="model.base_url.*only the 'openai' backend"):
        load_scenario(scenario, ["model.base_url='http://127.0.0.1:1/v1'"])
    with pytest.raises(ScenarioError, match="training.enabled.*frozen"):
        load_scenario(scenario, ["model.backend='openai'", "model.model='m'", "model.base_url='http://127.0.0.1:1/v1'", "training.enabled=true"])


def test_a_missing_api_key_variable_is_one_line(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("LLM_MARKET_SIM_TEST_KEY", raising=False)
    scenario = remote_scenario(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")
    with pytest.raises(UserError, match="LLM_MARKET_SIM_TEST_KEY is not set"):
        start(str(scenario), plain=True)


# --- simulation serve ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """A trained tiny run (one phase) served by `python -m simulation serve` on a free port."""
    folder = tmp_path_factory.mktemp("served")
    result = start(str(tiny_scenario(folder, tiny_model_dir, steps=4, training=True, every=2)), plain=True)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "simulation", "serve", str(result.run_dir), "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/v1/models", process)
        yield f"http://127.0.0.1:{port}/v1", result.run_dir
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_openai_client_calls_a_trained_agent(served):
    import openai

    base_url, _ = served
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    assert [model.id for model in client.models.list()] == [f"agent-{agent}" for agent in range(5)] + ["base"]
    messages = [{"role": "system", "content": "You are a balanced investor."}, {"role": "user", "content": "SYN0 price 100.00. State your belief."}]
    slotted = client.chat.completions.create(model="agent-1", messages=messages, seed=3, max_tokens=8, extra_body={"decision_slot": True})
    text = slotted.choices[0].message.content
    assert re.search(r"\nDecision: -?\d+$", text) and parse_answer(text).problem is None
    extension = slotted.model_extra["decision"]
    assert -10 <= extension["expected_decision"] <= 10 and extension["decision_std"] >= 0
    again = client.chat.completions.create(model="agent-1", messages=messages, seed=3, max_tokens=8, extra_body={"decision_slot": True})
    assert again.choices[0].message.content == text  # a seed makes the answer repeatable
    as_json = client.chat.completions.create(model="agent-1", messages=messages, seed=3, max_tokens=8,
                                             response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": {"type": "object"}}})
    answer = json.loads(as_json.choices[0].message.content)
    assert set(answer) == {"belief", "decision_depth"} and -10 <= answer["decision_depth"] <= 10
    plain = client.chat.completions.create(model="base", messages=messages, max_tokens=5, seed=1)
    assert plain.usage.completion_tokens <= 5 and plain.usage.prompt_tokens > 10
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="agent-99", messages=messages)
    assert missing.value.body["code"] == "model_not_found" and "agent-99" in missing.value.body["message"]


def test_a_scenario_runs_end_to_end_against_simulation_serve_and_the_key_is_never_kept(served, tmp_path, tiny_model_dir, monkeypatch, capfd):
    base_url, _ = served
    monkeypatch.setenv("LLM_MARKET_SIM_TEST_KEY", SECRET)
    result = start(str(remote_scenario(tmp_path, tiny_model_dir, base_url, steps=3)), plain=True)
    with duckdb.connect(str(result.database), read_only=True) as con:
        rows = con.execute("SELECT agent_id, served_by, fallback, expected_decision, prompt_tokens, completion_tokens, retries FROM decisions").fetchall()
        status, backend = con.execute("SELECT status, backend FROM run").fetchone()
    assert status == "completed" and len(rows) == 3 * 5
    assert all(served_by == f"agent-{agent}" and not fallback and expected is not None and prompt > 0 and completion > 0 and retries == 0
               for agent, served_by, fallback, expected, prompt, completion, retries in rows)
    assert json.loads(backend)["base_url"] == base_url and json.loads(backend)["api_key_env"] == "LLM_MARKET_SIM_TEST_KEY"
    printed = capfd.readouterr()
    for path in result.run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in printed.out + printed.err


# --- an independent server from the package index --------------------------------------------

def test_a_scenario_runs_against_transformers_serve(tmp_path, tiny_model_dir, monkeypatch):
    """`transformers serve` (transformers' own OpenAI-compatible server) with the tiny model: its
    random weights write no valid answer, so every decision is a counted fallback, and the run completes."""
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "transformers"), "serve", str(tiny_model_dir), "--port", str(port), "--device", "cpu"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/v1/models", process)
        monkeypatch.setenv("LLM_MARKET_SIM_TEST_KEY", SECRET)
        scenario = remote_scenario(tmp_path, tiny_model_dir, f"http://127.0.0.1:{port}/v1", model=str(tiny_model_dir), constraint="none",
                                   steps=2, extra_model="max_retries = 1")
        result = start(str(scenario), plain=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    with duckdb.connect(str(result.database), read_only=True) as con:
        fallbacks, reasons, retries, tokens = con.execute(
            "SELECT count(*) FILTER (WHERE fallback), list(DISTINCT fallback_reason), sum(retries), sum(completion_tokens) FROM decisions").fetchone()
        served_by = con.execute("SELECT DISTINCT served_by FROM decisions").fetchall()
    assert result.status == "completed" and tokens > 0 and served_by[0][0]
    assert fallbacks == 2 * 5 and set(reasons) <= {"non_numeric", "malformed_json", "out_of_range", "empty"} and retries == 2 * 5


# --- faults, on a scripted server -----------------------------------------------------------------

class ScriptedServer:
    """A real OpenAI-shaped server on localhost whose answers a test scripts: `mode` is
    'ok', 'slow' (sleeps past the client's timeout), 'malformed_once' (each request's first try
    gets a broken answer), or 'out_of_range' (always 42); `die_after` requests, then it stops."""

    def __init__(self, port: int, mode: str = "ok", die_after: int | None = None):
        # (Request is imported at module level: FastAPI resolves the handlers' annotations there)
        import uvicorn
        from fastapi import FastAPI

        self.port, self.mode, self.die_after, self.requests = port, mode, die_after, 0
        self.seen: set[str] = set()
        self.models: list[str] = []  # the model each chat request named, in order
        self.loaded: list[dict] = []  # every /v1/load_lora_adapter body
        app = FastAPI()

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request):
            self.loaded.append(await request.json())
            return "Success"

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            import asyncio

            body = await request.json()
            self.requests += 1
            self.models.append(body["model"])
            if self.die_after is not None and self.requests > self.die_after:
                self.server.should_exit = True
                raise ConnectionError("going down")
            if self.mode == "slow":
                await asyncio.sleep(3)
            seed = body["seed"]
            decision = (seed % 21) - 10
            content = json.dumps({"belief": f"Seed {seed % 97} says so.", "decision_depth": decision})
            asked = json.dumps(body["messages"]) + body["model"]
            first_try = asked not in self.seen
            self.seen.add(asked)
            if self.mode == "malformed_once" and first_try:
                content = '{"belief": "cut off", "decision_depth'
            if self.mode == "out_of_range":
                content = json.dumps({"belief": "Too sure.", "decision_depth": 42})
            return {"id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}}

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the scripted server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def _decisions(database: Path) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as con:
        return con.execute("SELECT step, agent_id, decision_depth, fallback_reason, retries FROM decisions ORDER BY step, agent_id").fetchall()


def test_malformed_and_out_of_range_answers_are_counted_retried_and_never_crash(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("LLM_MARKET_SIM_TEST_KEY", SECRET)
    with ScriptedServer(free_port(), "malformed_once") as server:
        result = start(str(remote_scenario(tmp_path / "a", tiny_model_dir, server.base_url, constraint="json_schema", steps=2)), plain=True)
    rows = _decisions(result.database)
    assert result.status == "completed" and all(reason is None and retries == 1 for *_, reason, retries in rows)
    with ScriptedServer(free_port(), "out_of_range") as server:
        result = start(str(remote_scenario(tmp_path / "b", tiny_model_dir, server.base_url, constraint="json_schema", steps=2,
                                           extra_model="max_retries = 2")), plain=True)
    rows = _decisions(result.database)
    assert result.status == "completed" and all(depth == 0 and reason == "out_of_range" and retries == 2 for _, _, depth, reason, retries in rows)


def test_a_slow_server_trips_the_timeout_and_the_run_fails_in_one_line(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("LLM_MARKET_SIM_TEST_KEY", SECRET)
    with ScriptedServer(free_port(), "slow") as server:
        scenario = remote_scenario(tmp_path, tiny_model_dir, server.base_url, constraint="json_schema", extra_model="timeout_s = 0.5\nmax_retries = 1")
        started = time.monotonic()
        with pytest.raises(UserError, match="did not answer after 1 retries") as error:
            start(str(scenario), plain=True)
        assert time.monotonic() - started < 20  # two tries of 0.5 s and a backoff, not the server's 3 s per request
    assert len(str(error.value).splitlines()) == 1 and "APITimeoutError" in str(error.value)
    with duckdb.connect(str(tmp_path / "runs" / "tiny" / "run.duckdb"), read_only=True) as con:
        assert con.execute("SELECT status FROM run").fetchone()[0] == "failed"


def test_a_server_killed_mid_run_fails_the_run_keeps_its_steps_and_resume_completes_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("LLM_MARKET_SIM_TEST_KEY", SECRET)
    port = free_port()
    scenario = remote_scenario(tmp_path, tiny_model_dir, f"http://127.0.0.1:{port}/v1", constraint="json_schema", steps=4, extra_model="max_retries = 1")
    with ScriptedServer(port, "ok", die_after=2 * 5 + 2) as server:  # two steps, then down in the third
        with pytest.raises(UserError, match="did not answer"):
            start(str(scenario), plain=True)
        server.thread.join(timeout=30)
    database = tmp_path / "runs" / "tiny" / "run.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("SELECT status FROM run").fetchone()[0] == "failed"
        assert con.execute("SELECT count(*) FROM steps").fetchone()[0] == 2
    kept = _decisions(database)
    with ScriptedServer(port, "ok"):
        result = resume(database.parent, plain=True)
    rows = _decisions(result.database)
    assert result.status == "completed" and len(rows) == 4 * 5 and rows[: len(kept)] == kept
    with ScriptedServer(free_port(), "ok") as server:  # an uninterrupted run draws the same decisions
        twin = start(str(remote_scenario(tmp_path / "twin", tiny_model_dir, server.base_url, constraint="json_schema", steps=4)), plain=True)
    assert _decisions(twin.database) == rows


def test_lora_updates_train_locally_and_register_a_new_adapter_name_per_version(tmp_path, tiny_model_dir, monkeypatch):
    """A vLLM-like server that loads adapters at run time (a scripted fake of its endpoint): each
    phase trains the local copy, registers every agent's adapter under a new name, and the agent's
    next requests name it."""
    monkeypatch.setenv("LLM_MARKET_SIM_TEST_KEY", SECRET)
    with ScriptedServer(free_port()) as server:
        scenario = remote_scenario(tmp_path, tiny_model_dir, server.base_url, model="served-base", constraint="json_schema", steps=4, training=True,
                                   extra_model=f'lora_updates = true\npath = "{tiny_model_dir}"')
        result = start(str(scenario), plain=True)
    assert result.status == "completed"
    names = [body["lora_name"] for body in server.loaded]
    assert len(names) == 2 * 5 and len(set(names)) == 10  # 2 phases x 5 agents, never a name twice
    assert all(name.endswith(f"-agent{agent}-v{phase}") for phase in (1, 2) for agent, name in enumerate(names[(phase - 1) * 5: phase * 5]))
    assert all((Path(body["lora_path"]) / "adapter_model.safetensors").is_file() for body in server.loaded)
    assert server.models[:10] == ["served-base"] * 10  # steps 0-1: the base model
    assert sorted(server.models[10:20]) == sorted(names[:5] * 2)  # steps 2-3: each agent's phase-1 adapter
    with duckdb.connect(str(result.database), read_only=True) as con:
        ids = con.execute("SELECT min(len(prompt_ids)), min(len(completion_ids)) FROM decisions").fetchone()
        trained = con.execute("SELECT count(*), sum(samples) FROM training").fetchone()
    assert min(ids) > 0 and trained[0] == 2 * 5 and trained[1] > 0


def test_apo_runs_on_the_remote_backend(tmp_path, tiny_model_dir, monkeypatch):
    """APO with a remote model as agents and optimizer: critiques and rewrites are plain chat
    requests, replays are decision requests; the scripted server's rewrites (its JSON answers)
    break the template, so they are rejected and counted, and the run completes."""
    monkeypatch.setenv("LLM_MARKET_SIM_TEST_KEY", SECRET)
    with ScriptedServer(free_port()) as server:
        scenario = remote_scenario(tmp_path, tiny_model_dir, server.base_url, model="served-base", constraint="json_schema", steps=4)
        scenario.write_text(scenario.read_text().replace("enabled = false\nevery = 2", 'enabled = true\nmethod = "apo"\nevery = 2', 1))
        result = start(str(scenario), plain=True)
    with duckdb.connect(str(result.database), read_only=True) as con:
        reasons = con.execute("SELECT reason FROM prompts WHERE parent_version IS NOT NULL").fetchall()
        usage = con.execute("SELECT purpose, sum(prompt_tokens) FROM apo_usage GROUP BY ALL ORDER BY 1").fetchall()
    assert result.status == "completed" and reasons and all(reason.startswith("rejected") for (reason,) in reasons)
    assert [purpose for purpose, _ in usage] == ["critique", "propose", "replay"] and all(tokens > 0 for _, tokens in usage)
