"""Which dependencies of a box install have a published wheel for a Raspberry Pi (bookworm, arm64)?

    .venv/bin/python packaging/check_wheels.py                 # omnishelf[edge,kiosk]
    .venv/bin/python packaging/check_wheels.py --extras edge   # a scan station

Resolves `omnishelf[<extras>]` from this checkout with pip against PyPI alone (`--dry-run --report`,
no local mirror or find-links, so the versions are the ones a box would get), then asks PyPI's
JSON API which files each resolved version has and prints, per package, the file a box with
CPython 3.11 on aarch64 (glibc 2.36) would install: an aarch64 manylinux wheel, a pure-Python
wheel, or nothing, meaning pip on the box builds it from source. Exit code 1 if anything builds
from source, 2 if PyPI or pip cannot be reached.

The resolution runs on this machine's Python, so environment markers are evaluated for it; that
is right for a Linux x86-64 CPython 3.11 host except for markers on `platform_machine`, which no
requirement of ours uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Target", "Verdict", "best_file", "main", "wheel_fits"]

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org"


@dataclasses.dataclass(frozen=True)
class Target:
    """The interpreter and platform a wheel must fit."""

    python: tuple[int, int] = (3, 11)
    """CPython version: Raspberry Pi OS bookworm ships 3.11."""
    arch: str = "aarch64"
    glibc: tuple[int, int] = (2, 36)
    """The newest manylinux_x_y a box accepts: bookworm has glibc 2.36."""


BOX = Target()

# The legacy manylinux names and the glibc version each stands for (PEP 600).
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def wheel_fits(filename: str, target: Target = BOX) -> str | None:
    """'pure' or 'binary' when the wheel `filename` installs on `target`, else None."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):  # name-version[-build]-python-abi-platform
        return None
    pythons, abis, platforms = (set(p.split(".")) for p in parts[-3:])
    if "any" in platforms:
        fits_platform = True
        pure = True
    else:
        fits_platform = any(_platform_fits(p, target) for p in platforms)
        pure = False
    if not fits_platform or not _python_fits(pythons, abis, target):
        return None
    return "pure" if pure and abis == {"none"} else "binary"


def _platform_fits(tag: str, target: Target) -> bool:
    for legacy, glibc in _LEGACY_MANYLINUX.items():
        if tag == f"{legacy}_{target.arch}":
            return glibc <= target.glibc
    if tag.startswith("manylinux_") and tag.endswith(f"_{target.arch}"):
        version = tag[len("manylinux_") : -len(f"_{target.arch}")].split("_")
        if len(version) == 2 and all(v.isdigit() for v in version):
            return (int(version[0]), int(version[1])) <= target.glibc
    return False


def _python_fits(pythons: set[str], abis: set[str], target: Target) -> bool:
    major, minor = target.python
    cp = f"cp{major}{minor}"
    generic = {f"py{major}", f"py{major}{minor}"}
    if "none" in abis and (pythons & generic or cp in pythons):
        return True
    if cp in abis and cp in pythons:
        return True
    if "abi3" in abis:
        # A stable-ABI wheel built for cp3X runs on every CPython 3.Y with Y >= X.
        return any(p.startswith(f"cp{major}") and p[3:].isdigit() and int(p[3:]) <= minor for p in pythons)
    return False


@dataclasses.dataclass(frozen=True)
class Verdict:
    name: str
    version: str
    kind: str
    """'binary' (an aarch64 wheel), 'pure' (a py3-none-any wheel) or 'source' (pip builds it)."""
    file: str
    """The wheel a box installs, or the sdist it builds from ('' when there is none)."""


def best_file(name: str, version: str, files: Iterable[str], target: Target = BOX) -> Verdict:
    """What a box gets for `name` `version` from a release with these file names."""
    files = sorted(files)
    fitting = [(kind, f) for f in files if (kind := wheel_fits(f, target))]
    # pip prefers a binary wheel for the exact interpreter over a generic one.
    for wanted in ("binary", "pure"):
        for kind, f in fitting:
            if kind == wanted:
                return Verdict(name, version, kind, f)
    sdists = [f for f in files if f.endswith((".tar.gz", ".zip"))]
    return Verdict(name, version, "source", sdists[0] if sdists else "")


def resolve(extras: Sequence[str]) -> list[tuple[str, str]]:
    """(name, version) of everything `pip install omnishelf[extras]` would install, from PyPI alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    # No configuration file: a site's mirror, find-links or constraints would change the answer.
    env["PIP_CONFIG_FILE"] = os.devnull
    # Its notice of a newer pip would otherwise be the last line of stderr, where the error is read.
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
            "--index-url", f"{PYPI}/simple", "--report", str(report), f"{ROOT}[{','.join(extras)}]",
        ]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            # pip's own ERROR lines name the cause (also inside a failed build step); else its last line.
            reason = [line for line in lines if line.startswith("ERROR:")][-2:] or lines[-1:]
            raise SystemExit(f"pip could not resolve omnishelf[{','.join(extras)}]: {' '.join(reason)}")
        items = json.loads(report.read_text())["install"]
    found = [(item["metadata"]["name"], item["metadata"]["version"]) for item in items]
    return sorted((p for p in found if p[0].lower() != "omnishelf"), key=lambda p: p[0].lower())


def release_files(name: str, version: str) -> list[str]:
    """The file names of release `version` of `name` on PyPI."""
    # The JSON API answers under the normalised name (PEP 503): Kivy -> kivy.
    project = f"{PYPI}/pypi/{re.sub(r'[-_.]+', '-', name).lower()}"
    try:
        return [f["filename"] for f in _get_json(f"{project}/{version}/json")["urls"]]
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise SystemExit(f"cannot read {project}/{version}/json: {exc}") from None
    # Some mirrors serve only the project's document; it lists every release's files.
    releases = _get_json(f"{project}/json").get("releases", {})
    if version not in releases:
        raise SystemExit(f"{project}/json lists no release {version}")
    return [f["filename"] for f in releases[version]]


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            data: dict[str, Any] = json.load(answer)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, TimeoutError) as exc:
        raise SystemExit(f"cannot read {url}: {exc}") from None
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--extras", default="edge,kiosk", help="extras to resolve (default: %(default)s)")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    try:
        packages = resolve(extras)
        verdicts = [best_file(name, version, release_files(name, version)) for name, version in packages]
    except SystemExit as exc:
        print(f"check_wheels: {exc}", file=sys.stderr)
        return 2
    label = {"binary": "aarch64 wheel", "pure": "pure Python", "source": "BUILDS FROM SOURCE"}
    width = max(len(f"{v.name} {v.version}") for v in verdicts)
    print(
        f"omnishelf[{','.join(extras)}] on CPython {BOX.python[0]}.{BOX.python[1]}, linux {BOX.arch}, "
        f"glibc {BOX.glibc[0]}.{BOX.glibc[1]} (Raspberry Pi OS bookworm): {len(verdicts)} packages"
    )
    for v in verdicts:
        print(f"  {f'{v.name} {v.version}':<{width}}  {label[v.kind]:<18}  {v.file or '(no file)'}")
    source = [v.name for v in verdicts if v.kind == "source"]
    print(f"builds from source: {', '.join(source)}" if source else "builds from source: none")
    return 1 if source else 0


if __name__ == "__main__":
    sys.exit(main())
