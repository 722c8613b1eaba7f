"""The list of engines: the one place that says what the cloud core is made of.

The app factory, the cloud bus, Alembic and the command line all read it; an engine that is not
listed here does not exist, and adding one is adding a line here (and its folder).

Kept light to import: the `omnishelf` command lists the engines' commands for its help with
`cli_commands()`, which reads each engine's `EngineSpec(cli=…)` from the module's source instead of
importing it (importing the seven engines costs seconds and the cloud's libraries, which a box does
not have); `load_engines()` imports the descriptors when something needs them.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.engine import EngineSpec

__all__ = ["ENGINE_MODULES", "EngineListError", "cli_commands", "load_engines"]

ENGINE_MODULES: tuple[str, ...] = (
    "cloud.access.engine",
    "cloud.fleet.engine",
    "cloud.catalogue.engine",
    "cloud.trace.engine",
    "cloud.signage.engine",
    "cloud.orders.engine",
    "cloud.staff.engine",
)
"""Each module holds `ENGINE: EngineSpec`. Order: handlers of one type run in this order, and the
engines' commands are listed in this order."""


EXTRA_ENV = "OMNISHELF_EXTRA_ENGINES"
"""Comma-separated modules holding an `ENGINE`, loaded after the built-in ones: a site's own engine,
or a test's, without editing this file."""


class EngineListError(RuntimeError):
    """An engine module cannot be found or read; the message is one line naming it."""


def _modules(extra: str) -> list[str]:
    return [*ENGINE_MODULES, *(m.strip() for m in extra.split(",") if m.strip())]


def load_engines() -> tuple[EngineSpec, ...]:
    return _load(os.environ.get(EXTRA_ENV, ""))


@functools.cache
def _load(extra: str) -> tuple[EngineSpec, ...]:
    engines: list[EngineSpec] = []
    for name in _modules(extra):
        try:
            engines.append(importlib.import_module(name).ENGINE)
        except (ImportError, AttributeError) as exc:
            raise EngineListError(f"engine module {name!r} cannot be loaded ({exc}); check {EXTRA_ENV}") from None
    names = [e.name for e in engines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EngineListError(f"two engines are named {', '.join(duplicates)}: engine names must be unique")
    return tuple(engines)


def cli_commands() -> dict[str, tuple[str, str]]:
    """`omnishelf <name>` → (module, help line) for every engine's commands, in engine order, read
    from the engine modules' source: nothing of an engine is imported (see the module docstring).
    Raises `EngineListError` for a module that cannot be found or declares its commands with
    anything but literals, and for a command declared twice."""
    return _cli(os.environ.get(EXTRA_ENV, ""))


@functools.cache
def _cli(extra: str) -> dict[str, tuple[str, str]]:
    commands: dict[str, tuple[str, str]] = {}
    owner: dict[str, str] = {}
    for module in _modules(extra):
        for name, target, help_text in declared_cli(module):
            if name in commands:
                raise EngineListError(f"engine modules {owner[name]!r} and {module!r} both declare the command {name!r}")
            commands[name], owner[name] = (target, help_text), module
    return commands


def declared_cli(module: str) -> list[tuple[str, str, str]]:
    """(name, module, help) of each `CliCommand` in `module`'s `ENGINE = EngineSpec(…, cli=(…))`.

    Finding the file imports the engine's parent packages (`cloud`, `cloud.fleet`: docstrings
    only), not the engine module."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        spec, problem = None, f" ({exc})"
    else:
        problem = ""
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise EngineListError(f"engine module {module!r} cannot be found{problem}; check {EXTRA_ENV}")
    try:
        tree = ast.parse(Path(spec.origin).read_bytes(), spec.origin)
    except (OSError, SyntaxError, ValueError) as exc:
        raise EngineListError(f"engine module {module!r} cannot be read ({exc})") from None
    for node in tree.body:
        value: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "ENGINE" for t in targets) and isinstance(value, ast.Call):
            cli = next((kw.value for kw in value.keywords if kw.arg == "cli"), None)
            if cli is None:
                return []
            if not isinstance(cli, ast.Tuple | ast.List):
                raise _not_literal(module, cli)
            return [_command(module, item) for item in cli.elts]
    raise EngineListError(f"engine module {module!r} has no 'ENGINE = EngineSpec(...)' at its top level")


def _command(module: str, node: ast.expr) -> tuple[str, str, str]:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "CliCommand"):
        raise _not_literal(module, node)
    fields = ("name", "module", "help")
    values: dict[str, str] = {}
    for field, arg in [*zip(fields, node.args, strict=False), *((kw.arg, kw.value) for kw in node.keywords)]:
        if field not in fields or not isinstance(arg, ast.Constant) or not isinstance(arg.value, str):
            raise _not_literal(module, node)
        values[field] = arg.value
    if set(values) != set(fields) or len(node.args) > len(fields):
        raise _not_literal(module, node)
    return values["name"], values["module"], values["help"]


def _not_literal(module: str, node: ast.expr) -> EngineListError:
    return EngineListError(
        f"engine module {module!r}, line {node.lineno}: write cli= as a tuple of CliCommand(name, module, help) "
        "with string literals (the omnishelf command reads it without importing the engine)"
    )
