"""`python -m simulation serve RUN`: a run's agents as OpenAI-compatible models.

Each agent is a model, `agent-3`: the run's base model with agent 3's adapter from training phase
K (default: the last phase; 0 = the untrained agent); `base` is the base model alone. Built on
FastAPI and uvicorn; it binds to 127.0.0.1 unless `--host` says otherwise.

- `GET /v1/models` lists them.
- `POST /v1/chat/completions` answers in one of two ways:
  - **with the agent's decision slot** when the request says `"decision_slot": true` or asks for a
    JSON `response_format`: the messages' chat prompt, a belief of at most `max_tokens` tokens,
    then the forced `Decision: ` and a valid number, exactly as in a run. The content is
    `{"belief": ..., "decision_depth": ...}` for a JSON `response_format`, else
    `belief\\nDecision: N`; the extension field `decision` carries `decision_depth`,
    `expected_decision` and `decision_std` (the slot's exact distribution);
  - **as a plain chat** otherwise, with the agent's adapter.
  `seed` makes an answer repeatable; `temperature` defaults to 1. Streaming is not offered.
- A model that does not exist is a 404 in the API's error shape (`model_not_found`); a malformed
  request a 400.

Requests are answered one at a time (one model in memory); a client's `concurrency` only queues.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agents.llm import LLM
from analysis.rundb import resolve_run_db
from core.errors import UserError
from simulation.evaluate import load_adapters, load_run_model
from simulation.run import run_scenario
from simulation.scenario import Scenario

DEFAULT_PORT = 8000


@dataclass
class ServedRun:
    llm: LLM
    scenario: Scenario
    run_id: str
    phase: int
    agents: int

    @property
    def models(self) -> list[str]:
        return [f"agent-{agent}" for agent in range(self.agents)] + ["base"]


def _run_row(database: Path) -> tuple[dict, list[int]]:
    """The run row and its training phases; a running run's locked database is read from a copy."""
    def read(path: Path):
        with duckdb.connect(str(path), read_only=True) as con:
            row = con.execute("SELECT * FROM run").df().iloc[0].to_dict()
            tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            phases = [p for (p,) in con.execute("SELECT DISTINCT phase FROM training ORDER BY 1").fetchall()] if "training" in tables else []
        return row, phases
    try:
        return read(database)
    except duckdb.IOException:  # the run is still writing it
        with tempfile.TemporaryDirectory() as folder:
            for suffix in ("", ".wal"):
                if Path(str(database) + suffix).exists():
                    shutil.copy(str(database) + suffix, Path(folder) / (database.name + suffix))
            return read(Path(folder) / database.name)


def load_served_run(run: str | Path, phase: int | None = None) -> ServedRun:
    database = resolve_run_db(run)
    info, phases = _run_row(database)
    scenario = run_scenario(info)
    if scenario.model.backend != "transformers":
        raise UserError(str(database), "model.backend", "this run's agents used a remote model, which has no adapters to serve", "serve the model from its own server")
    phase = (phases[-1] if phases else 0) if phase is None else phase
    if phase and phase not in phases:
        raise UserError(str(database), "--phase", f"the run has no training phase {phase} (it has {phases or 'none'})", "pick one of its phases, or 0 for the untrained agents")
    llm = load_run_model(scenario, info, database)
    if phase:  # phase 0: fresh adapters are the base model, so none are attached
        load_adapters(llm, scenario, database.parent / "adapters" / f"phase_{phase}")
    return ServedRun(llm, scenario, info["run_id"], phase, scenario.agents.n_agents)


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}})


class ChatRequest(BaseModel):
    """The body of `POST /v1/chat/completions` (OpenAI's fields this server reads, and `decision_slot`)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    seed: int | None = None
    response_format: dict | None = None
    decision_slot: bool = False
    stream: bool = False


def build_app(served: ServedRun):
    app = FastAPI(title="llm-market-sim agents", version="1")
    lock = threading.Lock()
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError):
        first = error.errors()[0]
        return _error(400, f"{'.'.join(str(part) for part in first['loc'][1:])}: {first['msg']}", param=str(first["loc"][-1]))

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": served.run_id} for name in served.models]}

    @app.get("/v1/models/{name}")
    def model(name: str):
        if name not in served.models:
            return _error(404, f"The model '{name}' does not exist; this server has {', '.join(served.models)}", "model", "model_not_found")
        return {"id": name, "object": "model", "created": created, "owned_by": served.run_id}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest):
        if request.model not in served.models:
            return _error(404, f"The model '{request.model}' does not exist; this server has {', '.join(served.models)}", "model", "model_not_found")
        if request.stream:
            return _error(400, "streaming is not offered by this server", "stream", "unsupported")
        agent = None if request.model == "base" else int(request.model.removeprefix("agent-"))
        temperature = 1.0 if request.temperature is None else request.temperature
        budget = request.max_completion_tokens or request.max_tokens
        wants_json = (request.response_format or {}).get("type") in ("json_schema", "json_object")
        with lock:
            if request.decision_slot or wants_json:
                content, usage, extension = _decide(served, request.messages, agent, temperature, budget, request.seed or 0, wants_json)
            else:
                content, usage, extension = _chat(served, request.messages, agent, temperature, budget or 128, request.seed or 0)
        body = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()), "model": request.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}}
        if extension is not None:
            body["decision"] = extension
        return body

    return app


def _prompt(served: ServedRun, messages: list[dict]) -> str:
    return served.llm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _decide(served: ServedRun, messages, agent, temperature, budget, seed, wants_json):
    config = served.scenario.model
    tokens = max(min(budget or config.belief_tokens, config.belief_tokens), 4)
    (completion,) = served.llm.generate([_prompt(served, messages)], [temperature], [agent] if agent is not None else None, belief_tokens=tokens,
                                        max_prompt_tokens=config.max_prompt_tokens, batch_size=1, seed=seed)
    extension = {"decision_depth": completion.decision_depth, "expected_decision": completion.expected_decision, "decision_std": completion.decision_std}
    content = json.dumps({"belief": completion.belief, "decision_depth": int(completion.decision_depth)}) if wants_json \
        else f"{completion.belief}\nDecision: {completion.decision_depth:g}"
    return content, {"prompt_tokens": len(completion.prompt_ids), "completion_tokens": len(completion.completion_ids)}, extension


def _chat(served: ServedRun, messages, agent, temperature, budget, seed):
    ((text, prompt_tokens, completion_tokens),) = served.llm.complete([messages], [agent] if agent is not None else None, max_tokens=budget,
                                                                      temperature=temperature, seed=seed)
    return text, {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}, None


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen | None = None, seconds: float = 180) -> None:
    """Return once GET `url` answers 200; raise if `process` (the server) exits first or time runs out."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {seconds} s")


def serve(run: str | Path, *, phase: int | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    import uvicorn

    served = load_served_run(run, phase)
    print(f"serving {', '.join(served.models)} of {run} (adapters of phase {served.phase}) at http://{host}:{port}/v1", flush=True)
    uvicorn.run(build_app(served), host=host, port=port, log_level="warning")
