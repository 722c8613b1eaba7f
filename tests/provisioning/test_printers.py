"""A network printer on the LAN (a real socket peer advertised with real zeroconf on 127.0.0.1):
found, sent a test page (the exact ESC/POS bytes arrive), and pushed into a claimed box's config."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provisioning import lan, printers
from provisioning.printers import FoundPrinter, find_printers
from tests.provisioning.conftest import LOOPBACK, BoxProc, Cloud, claim_box, start_box


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: nothing here depends on the database (the claim tests run on both)."""
    return f"sqlite:///{tmp_path / 'cloud.db'}"


class SocketPrinter:
    """A raw-socket printer: accepts connections on 127.0.0.1 and keeps what each one sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.jobs: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                self.jobs.append(data)

    def close(self) -> None:
        self.sock.close()


def test_printer_found_tested_and_pushed(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    printer = SocketPrinter()
    try:
        with lan.zeroconf(LOOPBACK) as zc:
            ad = lan.advertise(zc, "_pdl-datastream._tcp.local.", "TM-T88V-lab", printer.port, {"ty": "EPSON TM-T88V"}, LOOPBACK)
            try:
                found = find_printers(LOOPBACK, timeout=3)
            finally:
                ad.close()
        assert found == [FoundPrinter("TM-T88V-lab", LOOPBACK, printer.port, "raw")]

        box = start_box(tmp_path, "SN-5000")
        boxes.append(box)
        node = claim_box(cloud, box)
        key = cloud.api.headers["Authorization"].split(" ", 1)[1]
        out = subprocess.run(
            [sys.executable, "-m", "omnishelf.cli", "provision", "add-printer", node, f"{LOOPBACK}:{printer.port}",
             "--cloud", cloud.url, "--rollback-after", "0"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "OMNISHELF_API_KEY": key},
        )
        assert out.returncode == 0, out.stderr
        # Added to the kiosk's own devices (its profile's scanner, printer and screen).
        assert out.stdout.startswith(f"test page printed; printer {LOOPBACK}:{printer.port} pushed to {node} "
                                     "(profile kiosk-pi5, 4 devices; batch ")
        deadline = time.monotonic() + 10
        while not printer.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert printer.jobs == [printers.test_page(f"omnishelf: printer for {node}")]
        deadline = time.monotonic() + 30
        while f"port: {printer.port}" not in (box.config_dir / "box.yaml").read_text():
            assert time.monotonic() < deadline, "the box did not apply the printer"
            time.sleep(0.1)
    finally:
        printer.close()
