"""Write a `NodeConfig` as the YAML file `load_config` reads back to the same config.

The one way programs make box config files (the demo, tests, benchmarks, provisioning): nothing
spells YAML by hand. The file holds only what differs from the schema's defaults, plus every key
the config's profile sets, so that the profile cannot put its own value back on reading.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from firmware_config.models import NodeConfig
from firmware_config.profiles import PROFILES

__all__ = ["render_config", "write_config"]

_YAML_BREAKS = frozenset("\x85\u2028\u2029")
"""Characters YAML reads as line breaks: inside a plain or single-quoted scalar they fold to a
space on reading (a password holding one came back changed), so such a string is written
double-quoted, where the emitter escapes them."""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if _YAML_BREAKS.intersection(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_Dumper.add_representer(str, _str)


def _pin_profile_keys(out: dict[str, Any], full: dict[str, Any], profile: dict[str, Any]) -> None:
    for key, value in profile.items():
        if key not in full:
            continue
        if isinstance(value, dict) and isinstance(full[key], dict):
            _pin_profile_keys(out.setdefault(key, {}), full[key], value)
        else:
            out[key] = full[key]


def _ordered(data: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """`data` with its keys in the schema's order (what a reader expects), recursively."""
    out: dict[str, Any] = {}
    for key, value in model.items():
        if key in data:
            out[key] = _ordered(data[key], value) if isinstance(value, dict) and isinstance(data[key], dict) else data[key]
    return out


def render_config(cfg: NodeConfig, *, header: str | None = None) -> str:
    """The YAML text of `cfg`; `header` becomes a comment at the top (one or more lines)."""
    full = cfg.model_dump(mode="json")
    data: dict[str, Any] = cfg.model_dump(mode="json", exclude_defaults=True)
    if cfg.profile is not None:
        _pin_profile_keys(data, full, PROFILES[cfg.profile])
    text = yaml.dump(_ordered(data, full), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=1000)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    return text


def write_config(cfg: NodeConfig, path: str | os.PathLike[str], *, header: str | None = None) -> Path:
    """Write `cfg` to `path` atomically, readable by its owner only (a config may hold a password)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_config(cfg, header=header))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
