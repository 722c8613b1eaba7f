"""Box paths: relative to the config file, defaults under the data directory, never the cwd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firmware_config import BrokerConfig, NodeConfig, OutboxConfig, PathError, load_config, resolve_paths, write_config


def _cfg(**kw: object) -> NodeConfig:
    return NodeConfig.model_validate({"node_id": "st1-k1", "store_id": "st1", "broker": {"url": "mqtt://h"}, **kw})


CASES = [
    # (config data_dir, env, expected data_dir, source)
    pytest.param("/srv/box", {"OMNISHELF_DATA_DIR": "/x", "HOME": "/home/t"}, "/srv/box", "config", id="config-wins"),
    pytest.param("state", {"HOME": "/home/t"}, "{cfgdir}/state", "config", id="config-relative-to-file"),
    pytest.param(None, {"OMNISHELF_DATA_DIR": "/x", "STATE_DIRECTORY": "/y", "HOME": "/home/t"}, "/x", "$OMNISHELF_DATA_DIR", id="env"),
    pytest.param(None, {"STATE_DIRECTORY": "/var/lib/omnishelf:/var/lib/other", "HOME": "/home/t"}, "/var/lib/omnishelf",
                 "$STATE_DIRECTORY", id="systemd"),
    pytest.param(None, {"HOME": "/home/t"}, "/home/t/.local/state/omnishelf", "default", id="default"),
]


@pytest.mark.parametrize(("data_dir", "env", "expected", "source"), CASES)
def test_data_dir(tmp_path: Path, data_dir: str | None, env: dict[str, str], expected: str, source: str) -> None:
    cfg = load_config(write_config(_cfg(data_dir=data_dir), tmp_path / "etc" / "box.yaml"))
    paths = resolve_paths(cfg, env)
    assert (paths.data_dir, paths.data_dir_source) == (Path(expected.format(cfgdir=tmp_path / "etc")), source)
    assert paths.outbox == paths.data_dir / "edge" / "st1-k1" / "outbox.db"
    assert paths.outbox_lock == paths.outbox.with_name("outbox.db.lock")
    assert paths.catalogue == paths.data_dir / "edge" / "st1-k1" / "catalogue"


def test_relative_paths_resolve_against_the_config_file_whatever_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(broker=BrokerConfig(url="mqtt://h", password_file=Path("secrets/k1")), outbox=OutboxConfig(path=Path("q/outbox.db")))
    path = write_config(cfg, tmp_path / "etc" / "box.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    seen = []
    for cwd in (tmp_path, elsewhere):
        monkeypatch.chdir(cwd)
        # Loaded by a relative name from one place, used from another: still the same files.
        loaded = load_config(os.path.relpath(path, cwd))
        monkeypatch.chdir("/")
        seen.append(resolve_paths(loaded, {"HOME": "/home/t"}))
    assert seen[0] == seen[1]
    assert seen[0].outbox == tmp_path / "etc" / "q" / "outbox.db"
    assert seen[0].password_file == tmp_path / "etc" / "secrets" / "k1"


def test_a_config_built_in_code_places_relative_paths_under_its_node_directory() -> None:
    paths = resolve_paths(_cfg(outbox={"path": "o.db"}), {"OMNISHELF_DATA_DIR": "/d"})
    assert paths.outbox == Path("/d/edge/st1-k1/o.db")
    with pytest.raises(PathError, match="data_dir 'rel' is relative and the config was not loaded from a file"):
        resolve_paths(_cfg(data_dir="rel"), {})


def test_no_home_and_no_setting_is_a_clear_error() -> None:
    with pytest.raises(PathError, match=r"no data directory: set data_dir in the config, or \$OMNISHELF_DATA_DIR, or HOME"):
        resolve_paths(_cfg(), {})
