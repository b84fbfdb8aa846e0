"""The error tree drawn in ``relais.schemas.errors``'s docstring is the code's: a test walks it.

Every subclass of :class:`RelaisError` defined anywhere in the five packages must appear in
the drawing under its real parent, and the drawing names no class that does not exist.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from relais.schemas import errors

PACKAGES = ("schemas", "broker_config", "agents", "gateway", "cli")
_LINE = re.compile(r"^(?P<indent>[ │]*)(?:├── |└── )?(?P<name>[A-Z]\w+)")


def _drawn() -> dict[str, str | None]:
    """``{class name: parent name}`` as the docstring draws it."""
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n", 2)[1]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        text = line[4:]  # the block's own indent
        match = _LINE.match(text)
        if match is None or not match.group("name").endswith(("Error", "Denied", "Timeout")):
            continue
        depth = len(match.group("indent")) // 4 + (1 if "── " in text else 0)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group("name")] = stack[-1][1] if stack else None
        stack.append((depth, match.group("name")))
    return parents


def _defined() -> dict[str, str | None]:
    for package in PACKAGES:
        module = importlib.import_module(f"relais.{package}")
        for info in pkgutil.walk_packages(module.__path__, prefix=f"relais.{package}."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
    found: dict[str, str | None] = {"RelaisError": None}
    todo = [errors.RelaisError]
    while todo:
        cls = todo.pop()
        for child in cls.__subclasses__():
            if child.__module__.startswith("relais."):
                found[child.__name__] = cls.__name__
                todo.append(child)
    return found


def test_the_drawn_tree_is_the_code() -> None:
    assert _drawn() == _defined()
