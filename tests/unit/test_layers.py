"""The dependency direction sql ← queue ← {worker, api}, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "skiplock"

# For each layer, the skiplock layers its modules must not import.
FORBIDDEN = {
    "sql": {"queue", "worker", "api"},
    "queue": {"worker", "api"},
    "worker": {"api"},
    "api": {"worker"},
}


def _imported_layers(path: Path) -> set[str]:
    layers: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "skiplock" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    """No module of a layer imports a layer above or beside it."""
    files = sorted((SRC / layer).rglob("*.py"))
    assert files, f"layer {layer} has no modules"
    offenders = {
        str(f.relative_to(SRC)): sorted(_imported_layers(f) & FORBIDDEN[layer]) for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}
