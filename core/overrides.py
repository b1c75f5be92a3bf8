"""`--set KEY=VALUE` overrides: dotted keys into a nested settings dict, values read as TOML.

`training.step_size=2` sets `{"training": {"step_size": 2}}`; `seeds=[0, 1]` a list; a value
that is not valid TOML (`model=~/llm/qwen`) is taken as a string. The result is validated by the
caller's schema exactly as if it had been written in the file, so a typo in a key or a value out
of range is the same one-line error.
"""

from __future__ import annotations

import copy
import tomllib

from core.errors import UserError


def parse_value(text: str):
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def split_override(pair: str, source: str) -> tuple[str, str]:
    key, equals, value = pair.partition("=")
    if not equals or not key.strip() or any(not part for part in key.strip().split(".")):
        raise UserError(source, pair, "an override must be KEY=VALUE with a dotted key", "write it like training.trust=0.2")
    return key.strip(), value.strip()


def apply_overrides(settings: dict, pairs: list[str], source: str = "--set") -> dict:
    """A copy of `settings` with every `KEY=VALUE` of `pairs` set."""
    result = copy.deepcopy(settings)
    for pair in pairs:
        key, value = split_override(pair, source)
        *sections, name = key.split(".")
        node = result
        for section in sections:
            child = node.setdefault(section, {})
            if not isinstance(child, dict):
                raise UserError(source, key, f"{section!r} is a value, not a section", "override the key itself, without a dotted suffix")
            node = child
        node[name] = parse_value(value)
    return result


def override_model(model, pairs: list[str], source: str = "--set"):
    """A validated copy of the pydantic `model` with every `KEY=VALUE` of `pairs` set. The pairs
    land on the model's own values, nested sections included, so a section whose default differs
    from its class's defaults (a benchmark's `training`) keeps its other fields when one is set."""
    return type(model).model_validate(apply_overrides(model.model_dump(), pairs, source))
