"""The dependency direction, checked on the source.

sql ← queue ← {worker, api}; ``testing`` (throwaway servers, template
databases) sits on sql and queue only; ``cli`` and ``demo`` are the only
places that wire the worker and the API together, and no layer below imports
them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "skiplock"

WIRING = {"cli", "demo"}
"""May import every layer: the command and the demo run a worker and the API together."""

# For each layer, the skiplock layers its modules must not import.
FORBIDDEN = {
    "sql": {"queue", "worker", "api", "testing", *WIRING},
    "queue": {"worker", "api", "testing", *WIRING},
    "worker": {"api", "testing", *WIRING},
    "api": {"worker", "testing", *WIRING},
    "testing": {"worker", "api", *WIRING},
}


def _files(layer: str) -> list[Path]:
    """The modules of a layer: a package's tree, or a single module."""
    single = SRC / f"{layer}.py"
    return [single] if single.exists() else sorted((SRC / layer).rglob("*.py"))


def _imported_layers(path: Path) -> set[str]:
    layers: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "skiplock":  # from skiplock import worker
                names = [f"skiplock.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "skiplock" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    """No module of a layer imports a layer above or beside it."""
    files = _files(layer)
    assert files, f"layer {layer} has no modules"
    offenders = {
        str(f.relative_to(SRC)): sorted(_imported_layers(f) & FORBIDDEN[layer]) for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_cli_and_demo_wire_worker_and_api() -> None:
    """Outside cli/ and demo.py, no module imports both the worker and the API."""
    wiring = {
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if {"worker", "api"} <= _imported_layers(path)
    }
    allowed = {str(p.relative_to(SRC)) for layer in WIRING for p in _files(layer)}
    assert wiring, "nothing wires the worker and the API: the test no longer sees the imports"
    assert wiring <= allowed


@pytest.mark.parametrize("layer", sorted(WIRING | {"testing"}))
def test_checked_layers_exist(layer: str) -> None:
    """cli, demo and testing are where the layer table says (a rename must update it)."""
    assert _files(layer)
