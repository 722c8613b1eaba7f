"""Each role installs what its code imports and nothing of another role's (the fast checks).

pyproject.toml's extras are read as written (not the installed metadata, which may be older), and
compared with every import in the code, including the ones inside functions, which run on a box
as surely as the ones at the top. A real install of `omnishelf[edge]` alone is in test_install.py.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from omnishelf import cli

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ROLES = ("cloud", "edge", "kiosk", "broker")

# What each of our packages may rely on being installed: "core" is the dependencies every install
# has; a package of a role also has that role's extra (and the kiosk runs on a box, next to edge).
PACKAGE_ROLES: dict[str, frozenset[str]] = {
    "broker": frozenset({"core"}),
    "firmware_config": frozenset({"core"}),
    "gs1": frozenset({"core"}),
    "signage_rules": frozenset({"core"}),
    "provisioning": frozenset({"core"}),
    "omnishelf": frozenset({"core"}),
    "edge": frozenset({"core", "edge"}),
    "kiosk": frozenset({"core", "edge", "kiosk"}),
    "cloud": frozenset({"core", "cloud"}),
}
FILE_ROLES: dict[str, frozenset[str]] = {
    # `omnishelf demo` runs every role on one machine; cli.ROLES makes it ask for all of them.
    "omnishelf/demo.py": frozenset({"core", "broker", "cloud", "edge"}),
}
LIGHT_MODULES = {"cloud.engines"}
"""Modules of a role's package that any role may import: the `omnishelf` command reads the engines'
command names from cloud.engines, which imports nothing outside the standard library."""


def requirements(role: str) -> list[Requirement]:
    if role == "core":
        return [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][role]]


@cache
def _closure_of(dist: str, extras: frozenset[str]) -> frozenset[str]:
    """`dist` and everything it pulls in with `extras`, as installed here (canonical names)."""
    found: set[str] = {canonicalize_name(dist)}
    for line in md.requires(dist) or []:
        req = Requirement(line)
        envs = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            found |= _closure_of(req.name, frozenset(req.extras))
    return frozenset(found)


def closure(roles: Iterable[str]) -> frozenset[str]:
    """Every distribution installed with these roles' requirements."""
    found: set[str] = set()
    for role in roles:
        for req in requirements(role):
            if req.name == "omnishelf":
                continue
            if req.marker is None or req.marker.evaluate({"extra": role}):
                found |= _closure_of(req.name, frozenset(req.extras))
    return frozenset(found)


def python_files() -> Iterator[tuple[str, Path]]:
    for package in PACKAGE_ROLES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def runtime_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every absolute import that can run: not those under `if TYPE_CHECKING:`."""

    def walk(node: ast.AST) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (i for child in node.orelse for i in walk(child))
            return
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        for child in ast.iter_child_nodes(node):
            yield from walk(child)

    yield from walk(tree)


def test_every_import_is_installed_by_its_role() -> None:
    dists_of = md.packages_distributions()
    problems = []
    for package, path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        roles = FILE_ROLES.get(rel, PACKAGE_ROLES[package])
        allowed = closure(roles)
        for line, name in runtime_imports(ast.parse(path.read_text(), rel)):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top in PACKAGE_ROLES:
                if not PACKAGE_ROLES[top] <= roles and not any(name.startswith(m) for m in LIGHT_MODULES):
                    problems.append(f"{rel}:{line}: imports {name}, of the {sorted(PACKAGE_ROLES[top] - roles)} role")
                continue
            dists = {canonicalize_name(d) for d in dists_of.get(top, [])}
            if not dists:
                problems.append(f"{rel}:{line}: imports {top}, which no installed distribution provides")
            elif not dists & allowed:
                extras = ",".join(sorted(roles - {"core"}))
                where = f"omnishelf[{extras}]" if extras else "omnishelf's core dependencies"
                problems.append(f"{rel}:{line}: imports {top} ({', '.join(sorted(dists))}), not installed by {where}")
    assert not problems, "\n".join(problems)


def test_the_core_and_the_box_roles_leave_out_the_cloud_web_stack() -> None:
    box = closure({"core", "edge"})
    # Pillow is not in the list: python-escpos (the box's receipt printing) needs it.
    for dist in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "jinja2", "kivy"):
        assert dist not in box, dist
    assert "kivy" in closure({"core", "edge", "kiosk"})
    assert {"fastapi", "sqlalchemy", "psycopg", "pydantic-settings"} <= closure({"core", "cloud"})


def test_dev_installs_every_role() -> None:
    dev = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
    own = [r for r in dev if r.name == "omnishelf"]
    assert len(own) == 1 and own[0].extras == set(ROLES)


def test_every_command_names_declared_extras() -> None:
    declared = set(PYPROJECT["project"]["optional-dependencies"])
    for command in cli.commands():
        assert cli.roles_of(command), command  # every command belongs to a role
        assert set(cli.roles_of(command)) <= declared, command
    assert [cli.roles_of(c) for c in ("broker", "cloud", "users", "edge", "demo")] == [
        ("broker",), ("cloud",), ("cloud",), ("edge",), ("broker", "cloud", "edge")
    ]


def test_box_packages_import_nothing_of_the_cloud_when_loaded() -> None:
    """Imports every module of the box's packages (and the command's dispatcher) in a fresh
    interpreter, then lists what of the cloud's and the kiosk's distributions got loaded."""
    forbidden_dists = (closure({"cloud"}) | closure({"kiosk"})) - closure({"core", "edge"})
    forbidden = sorted(
        top
        for top, dists in md.packages_distributions().items()
        if {canonicalize_name(d) for d in dists} & forbidden_dists and top.isidentifier()
    )
    assert {"fastapi", "sqlalchemy", "kivy"} <= set(forbidden)
    script = f"""
import importlib, json, pkgutil, sys
for package in ("broker", "edge", "firmware_config", "gs1", "signage_rules"):
    importlib.import_module(package)
    for info in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
        importlib.import_module(info.name)
importlib.import_module("omnishelf.cli").build_parser(["--help"])
print(json.dumps(sorted(set({forbidden!r}) & set(sys.modules))))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == []

