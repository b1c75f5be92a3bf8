"""Pydantic validation errors as one line that names the file, the key and the fix.

Any config section (`core/schema.py` `Section`) validated through `one_line_error` reports its
first problem the same way, so a scenario file, a `--set` override and a benchmark's settings all
read alike: `scenarios/base.toml: training.holdout: value 1.0 is out of range (fix: use a value >= 0.0 and < 1.0)`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from core.errors import UserError
from core.schema import KeyedValueError


def one_line_error(kind: type[UserError], file: str, error: ValidationError, union_tags: tuple[str, ...] = (), reference: str = "scenarios/base.toml") -> UserError:
    """The first problem of `error` as a `kind` error. `union_tags` are the values of a tagged
    union's discriminator (pydantic puts them in the location, a user only knows the list index);
    `reference` is where the fixes point for documented keys."""
    first = error.errors(include_url=False)[0]
    more = error.error_count() - 1
    suffix = f" [{more} more problem{'s' if more > 1 else ''} after this one]" if more else ""
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, KeyedValueError):
        return kind(file, cause.key, cause.problem + suffix, cause.fix)
    key = _dotted(first["loc"], union_tags)
    problem, fix = _explain(first, reference, union_tags)
    return kind(file, key, problem + suffix, fix)


def _dotted(loc: tuple[Any, ...], union_tags: tuple[str, ...] = ()) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in union_tags and text.endswith("]"):
            continue  # pydantic names the union member; the user only knows the list index
        else:
            text += ("." if text else "") + str(part)
    return text


def _explain(error: dict[str, Any], reference: str, union_tags: tuple[str, ...]) -> tuple[str, str]:
    kind, ctx, message = error["type"], error.get("ctx", {}), error["msg"]
    if kind == "extra_forbidden":
        return "unknown key", f"remove it or check its spelling against {reference} (keys are documented there)"
    if kind == "missing":
        return "required key is missing", f"add it; see {reference} for an example"
    bounds = {name: ctx[name] for name in ("ge", "gt", "le", "lt") if name in ctx}
    if bounds:
        text = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        limits = " and ".join(f"{text[name]} {value}" for name, value in bounds.items())
        return f"value {error.get('input')!r} is out of range", f"use a value {limits}"
    if kind == "literal_error":
        return f"value {error.get('input')!r} is not allowed", f"use one of {ctx.get('expected')}"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return "unknown or missing kind", "set kind to " + " or ".join(repr(tag) for tag in union_tags)
    if kind == "value_error":
        return message.removeprefix("Value error, "), f"see the comments in {reference}"
    if kind.endswith(("_type", "_parsing")):
        return f"{message[0].lower() + message[1:]} (got {error.get('input')!r})", f"change the value's type; see {reference}"
    if kind == "string_pattern_mismatch":
        return f"{error.get('input')!r} has characters that are not allowed", "use only letters, digits, '_', '.' and '-'"
    if kind in ("too_short", "too_long"):
        return message[0].lower() + message[1:], f"see the comments in {reference}"
    return message, f"see the comments in {reference}"
