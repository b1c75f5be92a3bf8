"""The packages form layers, and no import points from a lower layer to a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top, as listed in docs/design.md. A module may import its own layer and those below.
LAYERS = ["core", "market", "agents", "training", "analysis", "simulation"]


def imports(path: Path) -> set[str]:
    """The top-level project packages a module imports (at module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(LAYERS)


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = []
    for layer, package in enumerate(LAYERS):
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in imports(path):
                if LAYERS.index(target) > layer:
                    upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert upward == []


def test_the_layer_list_names_every_package_and_the_design_doc_lists_it():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages == set(LAYERS)
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert " → ".join(f"`{layer}`" for layer in LAYERS) in design


def package_graph() -> dict[tuple[str, str], int]:
    """(importing package, imported package) -> how many modules of the first import the second."""
    edges: dict[tuple[str, str], int] = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            for target in imports(path) - {package}:
                edges[(package, target)] = edges.get((package, target), 0) + 1
    return edges


if __name__ == "__main__":  # python tests/test_layers.py: the import graph, bottom layer first
    for (source, target), modules in sorted(package_graph().items(), key=lambda edge: (LAYERS.index(edge[0][0]), LAYERS.index(edge[0][1]))):
        direction = "UP" if LAYERS.index(target) > LAYERS.index(source) else "down"
        print(f"{source:>10} -> {target:<10} {modules:>2} modules  {direction}")
