"""packaging/check_wheels.py: which wheel a Raspberry Pi box (CPython 3.11, aarch64, glibc 2.36) takes.

Table-driven over real file names from PyPI; the script's network half (pip's resolution, PyPI's
JSON API) runs in docs/install.md, whose doc test compares its output (versions aside).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    # Loaded by path: a top-level `packaging` import would be the PyPI library of that name.
    spec = importlib.util.spec_from_file_location("check_wheels", ROOT / "packaging" / "check_wheels.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_wheels"] = module
    spec.loader.exec_module(module)
    return module


cw = load()

WHEELS = [
    ("Kivy-2.3.1-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl", "binary"),
    ("pyyaml-6.0.4-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl", "binary"),
    ("pydantic_core-2.50.5-cp311-cp311-musllinux_1_1_aarch64.whl", None),  # musl, not glibc
    ("pydantic_core-2.50.5-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", None),
    ("pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl", None),  # other Python
    ("foo-1.0-cp311-cp311-manylinux_2_39_aarch64.whl", None),  # needs a newer glibc than bookworm's 2.36
    ("foo-1.0-cp311-cp311-manylinux_2_36_aarch64.whl", "binary"),
    ("foo-1.0-cp311-cp311-linux_armv7l.whl", None),  # 32-bit piwheels build
    ("cryptography-44.0.0-cp39-abi3-manylinux_2_28_aarch64.whl", "binary"),  # stable ABI from 3.9 on
    ("foo-1.0-cp312-abi3-manylinux_2_28_aarch64.whl", None),  # stable ABI from 3.12 on
    ("paho_mqtt-2.2.0-py3-none-any.whl", "pure"),
    ("filetype-1.2.0-py2.py3-none-any.whl", "pure"),
    ("foo-1.0-1-py3-none-any.whl", "pure"),  # with a build tag
    ("foo-1.0-py2-none-any.whl", None),
    ("foo-1.0.tar.gz", None),
]


@pytest.mark.parametrize(("filename", "expected"), WHEELS, ids=[w for w, _ in WHEELS])
def test_wheel_fits_a_box(filename: str, expected: str | None) -> None:
    assert cw.wheel_fits(filename) == expected


@pytest.mark.parametrize(
    ("files", "kind", "chosen"),
    [
        (["a-1.0-cp311-cp311-manylinux_2_17_aarch64.whl", "a-1.0-py3-none-any.whl", "a-1.0.tar.gz"],
         "binary", "a-1.0-cp311-cp311-manylinux_2_17_aarch64.whl"),
        (["a-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "a-1.0-py3-none-any.whl"], "pure", "a-1.0-py3-none-any.whl"),
        (["a-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "a-1.0.tar.gz"], "source", "a-1.0.tar.gz"),
        (["a-1.0-cp311-cp311-win_amd64.whl"], "source", ""),
    ],
)  # fmt: skip
def test_best_file_prefers_a_binary_wheel_then_a_pure_one_then_the_sdist(files: list[str], kind: str, chosen: str) -> None:
    assert cw.best_file("a", "1.0", files) == cw.Verdict("a", "1.0", kind, chosen)
