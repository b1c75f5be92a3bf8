"""The scenario reference (docs/scenario.md), generated from the schema so it cannot drift.

    python -m simulation keys > docs/scenario.md

A test checks that the committed file equals what this module generates.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel

from simulation.scenario import ImpactEvent, NewsEvent, Scenario, ShockEvent

INTRO = """# Scenario reference

A scenario is a TOML file; `scenarios/base.toml` is a commented example of every section. Unknown
keys are errors. `python -m simulation validate FILE` checks a file (schema, data, categories,
model path) without running it. This page is generated from the schema (`simulation/scenario.py` and the sections it assembles) by
`python -m simulation keys`.
"""


def _constraints(field) -> str:
    parts = []
    for item in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length")):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _type(annotation) -> str:
    text = str(annotation).replace("typing.", "")
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(repr(arg) for arg in typing.get_args(annotation))
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`"


def section_table(title: str, model: type[BaseModel]) -> str:
    lines = [f"## {title}", "", "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if isinstance(field.get_default(call_default_factory=True), BaseModel):
            continue
        lines.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_constraints(field)} | {field.description or ''} |")
    return "\n".join(lines)


def _sections() -> list[tuple[str, str, type[BaseModel]]]:
    """(title, dotted prefix, model) of every section, in reference order."""
    fields = Scenario.model_fields
    group = typing.get_args(fields["agents"].annotation.model_fields["groups"].annotation)[0]
    synthetic = fields["data"].annotation.model_fields["synthetic"].annotation
    sections = [(f"`{name}`", name, fields[name].annotation) for name in ("run", "data")]
    sections += [("`data.synthetic`", "data.synthetic", synthetic), ("`[[agents.groups]]`", "agents.groups", group)]
    sections += [(f"`{name}`", name, fields[name].annotation) for name in ("model", "market", "training")]
    sections += [("`training.apo`", "training.apo", fields["training"].annotation.model_fields["apo"].annotation), ("`aed`", "aed", fields["aed"].annotation)]
    for event in (NewsEvent, ShockEvent, ImpactEvent):
        kind = typing.get_args(event.model_fields["kind"].annotation)[0]
        sections.append((f'`[[events]]` with `kind = "{kind}"`', "events", event))
    return sections


def documented_keys() -> list[str]:
    """Every key a scenario may set, dotted (`training.trust`, `events.text`)."""
    return [f"{prefix}.{name}" for _, prefix, model in _sections() for name, field in model.model_fields.items()
            if not isinstance(field.get_default(call_default_factory=True), BaseModel)]


def scenario_reference() -> str:
    return INTRO + "\n" + "\n\n".join(section_table(title, model) for title, _, model in _sections()) + "\n"
