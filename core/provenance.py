"""What a result needs to be reproduced: the code's commit and the versions of what it ran on."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "mesa", "duckdb", "numpy", "pandas", "pydantic", "gguf", "sentence-transformers", "ray")
_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> tuple[str, bool]:
    """(HEAD's commit, whether the working tree has uncommitted changes); ("unknown", True) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_ROOT, capture_output=True, text=True, check=True, timeout=10).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", True


def provenance() -> dict:
    """Commit, dirty flag, package versions, machine and time, for a result file."""
    commit, dirty = git_commit()
    return {"commit": commit, "dirty": dirty, "packages": package_versions(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "created": datetime.now(UTC).isoformat(timespec="seconds")}


def package_versions_json() -> str:
    return json.dumps(package_versions(), sort_keys=True)
