"""Which process is the broker of a data directory (backups send it SIGUSR1, which ends most other
processes): read from /proc, here a fake one."""

from __future__ import annotations

from pathlib import Path

from broker.mosquitto import running_mosquitto


def _process(proc: Path, pid: int, argv: list[str], cwd: Path | None = None) -> None:
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    (entry / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    if cwd is not None:
        (entry / "cwd").symlink_to(cwd)


def test_the_broker_of_a_data_directory_is_the_mosquitto_started_with_its_config(tmp_path: Path) -> None:
    data, other, proc = tmp_path / "var" / "broker", tmp_path / "other", tmp_path / "proc"
    data.mkdir(parents=True)
    (proc / "self").mkdir(parents=True)
    # Not Mosquitto, though its command line names the config; Mosquitto of another directory.
    _process(proc, 10, ["/opt/omnishelf/bin/python", "-m", "omnishelf.cli", "broker", "-c", str(data / "mosquitto.conf")])
    _process(proc, 11, ["/usr/sbin/mosquitto", "-c", str(other / "mosquitto.conf")])
    assert running_mosquitto(data, proc) is None
    # Started with a path relative to its working directory (an older omnishelf, or by hand).
    _process(proc, 12, ["mosquitto", "-c", "var/broker/mosquitto.conf"], cwd=tmp_path)
    assert running_mosquitto(data, proc) == 12
    assert running_mosquitto(other, proc) == 11
    assert running_mosquitto(data, tmp_path / "no-proc") is None
