"""The packages are layers: imports point down schemas ← broker_config ← agents ← gateway ← cli.

Read from the source files (``ast``), every import of a ``relais.*`` module, at any depth of
the module (functions included), is checked against the declared order; and no module
imports a bare top-level folder name (``agents``, ``cli``...), which another installed
distribution may own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("schemas", "broker_config", "agents", "gateway", "cli")
BARE = frozenset(LAYERS)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(layer: str) -> list[Path]:
    return sorted(p for p in (ROOT / layer).rglob("*.py") if ".venv" not in p.parts)


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down_the_layers(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    wrong = []
    for path in _modules(layer):
        for line, name in _imports(path):
            parts = name.split(".")
            if parts[0] in BARE:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: bare import of {name}")
            elif parts[0] == "relais" and len(parts) > 1 and parts[1] not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {layer} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_every_layer_has_modules() -> None:
    """The check above looks at real files (a moved folder would make it vacuous)."""
    for layer in LAYERS:
        assert len(_modules(layer)) >= 3, layer
