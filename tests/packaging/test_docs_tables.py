"""The tables of docs/install.md that restate the packaging, compared with what they restate, so that
they cannot rot: "What each role installs" with pyproject.toml's extras, the store box profiles with
firmware_config's profiles and packaging/box/setup-box.sh."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from firmware_config.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "docs" / "install.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CORE = "(core, always)"
NOTHING = "nothing beyond the core"


def table_after(header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header row is `header`."""
    lines = INSTALL.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == header]
    assert len(starts) == 1, f"{INSTALL}: expected one table with the header {header!r}, found {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def packages(cell: str) -> set[str]:
    """'psycopg (binary), Jinja2' -> {'psycopg', 'jinja2'}: names as pip knows them, notes dropped."""
    if cell == NOTHING:
        return set()
    return {canonicalize_name(re.sub(r"\s*\(.*?\)", "", name).strip()) for name in cell.split(",")}


def declared(extra: str | None) -> set[str]:
    reqs = PYPROJECT["project"]["dependencies"] if extra is None else PYPROJECT["project"]["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name) for r in reqs}


def test_what_each_role_installs_is_what_pyproject_declares() -> None:
    rows = {row[0].strip("`"): packages(row[1]) for row in table_after("| extra | Python packages | why |")}
    extras = set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}  # dev: every role and the test tools
    assert set(rows) == {CORE, *extras}, "a row per extra (and one for the core), no row for an extra that is gone"
    assert rows[CORE] == declared(None), f"core: the table says {sorted(rows[CORE])}, pyproject {sorted(declared(None))}"
    for extra in sorted(extras):
        assert rows[extra] == declared(extra), (
            f"{extra}: the table says {sorted(rows[extra])}, pyproject.toml's extra {sorted(declared(extra))}")


def test_the_table_reader_sees_a_stale_row() -> None:
    """The comparison above can fail: a package left out of a cell is seen."""
    row = next(r for r in table_after("| extra | Python packages | why |") if r[0] == "`cloud`")
    shorter = ", ".join(part for part in row[1].split(", ") if part != "Shapely")
    assert packages(row[1]) == declared("cloud") != packages(shorter)


def _setup_box_extras() -> dict[str, str]:
    """profile -> extras, from setup-box.sh's `case` (`kiosk-pi5 | signage-player) extras=edge,kiosk …`)."""
    script = (ROOT / "packaging" / "box" / "setup-box.sh").read_text()
    out = {}
    for profiles, extras in re.findall(r"^\s*([a-z0-9| -]+)\)\s*extras=(\S+)", script, re.M):
        for profile in profiles.split("|"):
            out[profile.strip()] = extras
    return out


def test_every_box_profile_is_documented_with_the_extras_setup_box_installs() -> None:
    rows = {row[0].strip("`"): row[1].strip("`") for row in table_after("| profile | extras | Debian packages |")}
    assert set(rows) == set(PROFILES), f"docs/install.md lists {sorted(rows)}, firmware_config has {sorted(PROFILES)}"
    assert _setup_box_extras() == rows, "setup-box.sh installs other extras than docs/install.md says"
