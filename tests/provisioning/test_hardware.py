"""The box's serial and model read from fake /proc and /sys trees (provisioning.hardware), and setup
mode's one-line error when the machine has none. No zeroconf, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnishelf import cli
from provisioning import hardware
from provisioning.hardware import HardwareError, model_name, read_hardware

PI5_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41

Revision\t: d04170
Serial\t\t: 6a2d8c1f0e3b4a59
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def test_a_raspberry_pi_from_its_device_tree(tmp_path: Path) -> None:
    # The kernel ends device-tree strings with a NUL.
    root = tree(tmp_path, {"proc/device-tree/serial-number": b"6a2d8c1f0e3b4a59\0",
                           "proc/device-tree/model": b"Raspberry Pi 5 Model B Rev 1.0\0", "proc/cpuinfo": PI5_CPUINFO})
    found = read_hardware(root)
    assert (found.serial, found.model) == ("6a2d8c1f0e3b4a59", "pi5")
    assert (found.serial_from, found.model_from) == ("/proc/device-tree/serial-number", "/proc/device-tree/model")


def test_cpuinfo_when_the_device_tree_has_no_serial(tmp_path: Path) -> None:
    root = tree(tmp_path, {"sys/firmware/devicetree/base/model": b"Raspberry Pi Compute Module 4 Rev 1.1\0",
                           "proc/cpuinfo": PI5_CPUINFO.replace("6a2d8c1f0e3b4a59", "10000000b1c2d3e4")})
    found = read_hardware(root)
    assert (found.serial, found.serial_from) == ("10000000b1c2d3e4", "/proc/cpuinfo (Serial)")
    assert (found.model, found.model_from) == ("cm4", "/sys/firmware/devicetree/base/model")


def test_a_pc_from_dmi_skipping_placeholders(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "proc/cpuinfo": "processor\t: 0\nmodel name\t: Intel(R) Celeron(R) J4125\n",
        "sys/class/dmi/id/product_serial": "To Be Filled By O.E.M.\n",
        "sys/class/dmi/id/board_serial": "BQKW 1234/56\n",
        "sys/class/dmi/id/product_name": "Default string\n",
        "sys/class/dmi/id/board_name": "OptiPlex 3080\n",
    })
    found = read_hardware(root)
    assert (found.serial, found.model) == ("BQKW-1234-56", "optiplex-3080")
    assert (found.serial_from, found.model_from) == ("/sys/class/dmi/id/board_serial", "/sys/class/dmi/id/board_name")


@pytest.mark.parametrize(("raw", "model"), [
    ("Raspberry Pi 5 Model B Rev 1.0", "pi5"),
    ("Raspberry Pi 4 Model B Rev 1.4", "pi4"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3"),
    ("Raspberry Pi Compute Module 5 Rev 1.0", "cm5"),
    ("Raspberry Pi 500 Rev 1.0", "pi500"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "pizero2w"),
    ("ODROID-N2Plus", "odroid-n2plus"),
])
def test_model_names(raw: str, model: str) -> None:
    assert model_name(raw) == model


def test_no_serial_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    root = tree(tmp_path, {"proc/cpuinfo": "processor\t: 0\nSerial\t\t: 0000000000000000\n",
                           "sys/class/dmi/id/product_name": "OptiPlex 3080\n"})
    with pytest.raises(HardwareError) as caught:
        read_hardware(root)
    assert str(caught.value) == (
        "no hardware serial found (looked in /proc/device-tree/serial-number, /sys/firmware/devicetree/base/serial-number, "
        "/proc/cpuinfo (Serial), /sys/class/dmi/id/product_serial, /sys/class/dmi/id/board_serial): "
        "give --serial, as on the box's label"
    )


def test_a_serial_only_root_may_read_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DMI's product_serial is root's alone (0400); the tests may run as root, so the refusal is made here.
    root = tree(tmp_path, {"sys/class/dmi/id/product_serial": "J4X2Q93\n", "sys/class/dmi/id/product_name": "OptiPlex 3080\n"})
    locked = root / "sys/class/dmi/id/product_serial"
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(HardwareError, match=r"\(.*/product_serial: readable by root only\): give --serial"):
        read_hardware(root)


def test_no_model_anywhere(tmp_path: Path) -> None:
    root = tree(tmp_path, {"proc/device-tree/serial-number": b"6a2d8c1f0e3b4a59\0"})
    with pytest.raises(HardwareError, match=r"^no hardware model found \(looked in .*\): give --model, e\.g\. --model pi5$"):
        read_hardware(root)


def test_setup_mode_without_a_serial_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hardware, "ROOT", tree(tmp_path / "root", {"proc/cpuinfo": "processor\t: 0\n"}))
    code = cli.main(["provision", "setup-mode", "--config-dir", str(tmp_path / "etc")])
    err = capsys.readouterr().err
    assert (code, err.count("\n")) == (2, 1)
    assert err.startswith("omnishelf: error: no hardware serial found (looked in /proc/device-tree/serial-number, ")
    assert not (tmp_path / "etc").exists()  # nothing made, nothing advertised


def test_setup_mode_takes_what_is_given_and_reads_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioning import cli as provision_cli

    monkeypatch.setattr(hardware, "ROOT", tree(tmp_path, {"proc/device-tree/model": b"Raspberry Pi 5 Model B Rev 1.0\0"}))
    args = cli.build_parser(["provision"]).parse_args(["provision", "setup-mode", "--config-dir", "x", "--serial", "SN-7"])
    assert provision_cli._hardware(args) == ("SN-7", "pi5")
