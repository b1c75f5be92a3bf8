"""Where benchmark results go, and how one is written (every file records its provenance and settings)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def write_result(out: Path, result: dict) -> Path:
    """Write `result` (which holds its `provenance` and settings) as indented JSON at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"written: {out}")
    return out
