"""The box's hardware serial and model, as setup mode advertises them when `--serial`/`--model` are
not given: from the device tree (a Raspberry Pi, most ARM boards), else `/proc/cpuinfo`'s `Serial`
and `Model` lines (Raspberry Pi kernels without a device-tree serial), else the firmware's DMI
table (`/sys/class/dmi/id`, a PC). Each value comes from the first source that has a real one.

Both end up in the cloud's records and in node ids' neighbours (`omnishelf fleet identities`), which
take 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-': a serial keeps its characters, other ones
becoming '-'; a model is shortened to what profiles are named after (`Raspberry Pi 5 Model B Rev
1.0` → `pi5`, see `firmware_config.profiles`), else made a slug (`OptiPlex 3080` → `optiplex-3080`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hardware", "HardwareError", "model_name", "read_hardware", "read_model", "read_serial", "serial_text"]

ROOT = Path("/")
"""Where the file system is read from (tests point it at a tree of fake files)."""

DEVICE_TREE = ("proc/device-tree", "sys/firmware/devicetree/base")
CPUINFO = "proc/cpuinfo"
DMI = "sys/class/dmi/id"

# What firmware writes in DMI fields it was not given (and Pi kernels in an unset serial).
_PLACEHOLDERS = {
    "", "none", "n/a", "na", "default string", "to be filled by o.e.m.", "system serial number", "system product name",
    "not specified", "not applicable", "not available", "unknown", "123456789", "invalid", "oem", "o.e.m.",
}
_PI = re.compile(r"^Raspberry Pi (?:(?P<cm>Compute Module) )?(?P<n>\d+)\b", re.I)
_ZERO = re.compile(r"^Raspberry Pi Zero ?(?P<n>\d*) ?(?P<w>W)?", re.I)


class HardwareError(RuntimeError):
    """No usable serial (or model) on this machine; the message says where it looked."""


@dataclass(frozen=True, slots=True)
class Hardware:
    serial: str
    model: str
    serial_from: str
    """The file the serial was read from (for the log)."""
    model_from: str


def _clean(raw: str) -> str | None:
    text = raw.replace("\0", "").strip()
    if text.lower() in _PLACEHOLDERS or set(text) <= {"0"} or set(text.lower()) <= {"f"}:
        return None
    return text


def _read(path: Path, unreadable: list[str]) -> str | None:
    try:
        return _clean(path.read_bytes().decode("utf-8", "replace"))
    except FileNotFoundError:
        return None
    except PermissionError:
        unreadable.append(str(path))
        return None
    except OSError:
        return None


def _cpuinfo(path: Path, key: str) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return _clean(value)
    return None


def serial_text(raw: str) -> str:
    """A serial as the cloud takes it: its own characters, others (spaces, '/', …) as '-'."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-._")
    return text[:64]


def model_name(raw: str) -> str:
    """`Raspberry Pi 5 Model B Rev 1.0` → `pi5`, `Raspberry Pi Compute Module 4 Rev 1.1` → `cm4`,
    `Raspberry Pi Zero 2 W Rev 1.0` → `pizero2w`; anything else as a lower-case slug."""
    if m := _ZERO.match(raw):
        return f"pizero{m.group('n')}{(m.group('w') or '').lower()}"
    if m := _PI.match(raw):
        return f"{'cm' if m.group('cm') else 'pi'}{m.group('n')}"
    slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    return slug[:64]


def _sources(base: Path, unreadable: list[str]) -> tuple[list[tuple[str | None, str]], list[tuple[str | None, str]]]:
    serials: list[tuple[str | None, str]] = []
    models: list[tuple[str | None, str]] = []
    for tree in DEVICE_TREE:
        serials.append((_read(base / tree / "serial-number", unreadable), f"/{tree}/serial-number"))
        models.append((_read(base / tree / "model", unreadable), f"/{tree}/model"))
    serials.append((_cpuinfo(base / CPUINFO, "Serial"), f"/{CPUINFO} (Serial)"))
    models.append((_cpuinfo(base / CPUINFO, "Model"), f"/{CPUINFO} (Model)"))
    for name in ("product_serial", "board_serial"):
        serials.append((_read(base / DMI / name, unreadable), f"/{DMI}/{name}"))
    for name in ("product_name", "board_name"):
        models.append((_read(base / DMI / name, unreadable), f"/{DMI}/{name}"))
    return serials, models


def read_serial(root: Path | None = None) -> tuple[str, str]:
    """The machine's serial and the file it came from. Raises `HardwareError`."""
    unreadable: list[str] = []
    serials, _ = _sources(ROOT if root is None else root, unreadable)
    found = next(((serial_text(v), where) for v, where in serials if v and serial_text(v)), None)
    if found is None:
        looked = ", ".join(where for _, where in serials)
        denied = f" ({', '.join(unreadable)}: readable by root only)" if unreadable else ""
        raise HardwareError(f"no hardware serial found (looked in {looked}){denied}: give --serial, as on the box's label")
    return found


def read_model(root: Path | None = None) -> tuple[str, str]:
    """The machine's model (short, see `model_name`) and the file it came from. Raises `HardwareError`."""
    _, models = _sources(ROOT if root is None else root, [])
    found = next(((model_name(v), where) for v, where in models if v and model_name(v)), None)
    if found is None:
        raise HardwareError(f"no hardware model found (looked in {', '.join(where for _, where in models)}): "
                            "give --model, e.g. --model pi5")
    return found


def read_hardware(root: Path | None = None) -> Hardware:
    """The machine's serial and model (see the module's docstring). Raises `HardwareError`."""
    serial, serial_from = read_serial(root)
    model, model_from = read_model(root)
    return Hardware(serial=serial, model=model, serial_from=serial_from, model_from=model_from)
