"""Where a box keeps its files, resolved from its config: never from the current directory.

A relative path in a config file is relative to that file's directory, so `omnishelf edge run
--config /etc/omnishelf/box.yaml` uses the same files whether it is started from `/`, from a
technician's home or by systemd. What the file does not place goes under the data directory:
`data_dir` from the file, else `$OMNISHELF_DATA_DIR`, else `$STATE_DIRECTORY` (what systemd's
`StateDirectory=` sets), else `~/.local/state/omnishelf`; each node gets `<data_dir>/edge/<node_id>/`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from firmware_config.models import NodeConfig

__all__ = ["DATA_DIR_ENV", "BoxPaths", "PathError", "resolve_paths"]

DATA_DIR_ENV = "OMNISHELF_DATA_DIR"
_SYSTEMD_ENV = "STATE_DIRECTORY"


class PathError(ValueError):
    """A path that cannot be resolved without guessing (e.g. no home directory to default to)."""


@dataclass(frozen=True, slots=True)
class BoxPaths:
    """Every file and directory the agent uses, as absolute paths."""

    data_dir: Path
    data_dir_source: str
    """Where `data_dir` came from: 'config', '$OMNISHELF_DATA_DIR', '$STATE_DIRECTORY' or 'default'."""
    node_dir: Path
    """`<data_dir>/edge/<node_id>`: the default home of the outbox and the catalogue."""
    outbox: Path
    outbox_lock: Path
    """Held (flock) by the one agent that uses this outbox."""
    catalogue: Path
    station: Path
    """The scanning station's database (scans, verdicts, offline lists, print queue)."""
    password_file: Path | None
    ca_file: Path | None
    """The broker's CA file (`broker.ca_file`), if the config names one."""
    clerks: Path
    """The clerks' roster and sign-in state (lockouts, sessions)."""
    orders: Path
    """The order desk's database (assigned orders, their steps, the slips)."""
    kiosk: Path
    """The cloud shelf's index (categories, pinyin search, availability, the orders placed)."""
    signage: Path
    """The signage player's directory (schedules, the media cache, proof of play)."""
    wifi_psk: Path | None = None
    """The Wi-Fi passphrase file (`network.wifi.psk_file`), if the box joins a Wi-Fi network."""


def _place(value: Path, base: Path) -> Path:
    value = value.expanduser()
    return value if value.is_absolute() else base / value


def _data_dir(cfg: NodeConfig, env: Mapping[str, str]) -> tuple[Path, str]:
    if cfg.data_dir is not None:
        if cfg.base_dir is None and not cfg.data_dir.expanduser().is_absolute():
            raise PathError(
                f"data_dir {str(cfg.data_dir)!r} is relative and the config was not loaded from a file: "
                "expected an absolute path"
            )
        return _place(cfg.data_dir, cfg.base_dir or Path("/")), "config"
    if env.get(DATA_DIR_ENV):
        # An environment variable is the shell's (or the unit's) choice, so relative means relative
        # to where that shell is, once, here.
        return Path(os.path.abspath(Path(env[DATA_DIR_ENV]).expanduser())), f"${DATA_DIR_ENV}"
    if env.get(_SYSTEMD_ENV):
        # systemd lists one directory per StateDirectory= entry, separated by ':'.
        return Path(os.path.abspath(env[_SYSTEMD_ENV].split(":")[0])), f"${_SYSTEMD_ENV}"
    home = env.get("HOME")
    if not home:
        raise PathError(
            f"no data directory: set data_dir in the config, or ${DATA_DIR_ENV}, or HOME (found none of them)"
        )
    return Path(home) / ".local" / "state" / "omnishelf", "default"


def resolve_paths(cfg: NodeConfig, env: Mapping[str, str] | None = None) -> BoxPaths:
    """Resolve the box's paths (`env` defaults to `os.environ`). Raises `PathError`."""
    environ = os.environ if env is None else env
    data_dir, source = _data_dir(cfg, environ)
    node_dir = data_dir / "edge" / cfg.node_id
    # A config built in code has no file; its relative paths go under the node's directory.
    base = cfg.base_dir or node_dir
    outbox = _place(cfg.outbox.path, base) if cfg.outbox.path else node_dir / "outbox.db"
    catalogue = _place(cfg.catalogue.path, base) if cfg.catalogue.path else node_dir / "catalogue"
    station = _place(cfg.station.path, base) if cfg.station.path else node_dir / "station.db"
    secret = _place(cfg.broker.password_file, base) if cfg.broker.password_file else None
    ca_file = _place(cfg.broker.ca_file, base) if cfg.broker.ca_file else None
    return BoxPaths(
        data_dir=data_dir,
        data_dir_source=source,
        node_dir=node_dir,
        outbox=outbox,
        outbox_lock=outbox.with_name(outbox.name + ".lock"),
        catalogue=catalogue,
        station=station,
        password_file=secret,
        ca_file=ca_file,
        clerks=_place(cfg.clerks.path, base) if cfg.clerks.path else node_dir / "clerks.db",
        orders=_place(cfg.orders.path, base) if cfg.orders.path else node_dir / "orders.db",
        kiosk=_place(cfg.kiosk.path, base) if cfg.kiosk.path else node_dir / "kiosk.db",
        signage=_place(cfg.signage.path, base) if cfg.signage.path else node_dir / "signage",
        wifi_psk=_place(cfg.network.wifi.psk_file, base) if cfg.network.wifi else None,
    )
