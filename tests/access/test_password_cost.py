"""The suite hashes passwords at argon2's cheapest (tests/conftest.py); these check what a real
installation gets instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cloud.settings import SettingsError, load_settings

_PROBE = """
from cloud.access import service
print(service._hasher().hash("x").split("$")[3])
"""


def _hash_parameters(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def test_a_real_installation_hashes_with_rfc_9106_low_memory() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMNISHELF_PASSWORD_HASH"}
    assert _hash_parameters(env) == "m=65536,t=3,p=4"
    assert _hash_parameters(env | {"OMNISHELF_PASSWORD_HASH": "test-only-cheapest"}) == "m=8,t=1,p=1"


def test_an_unknown_hash_setting_is_refused() -> None:
    with pytest.raises(SettingsError, match="OMNISHELF_PASSWORD_HASH"):
        load_settings(PASSWORD_HASH="md5")
