"""`omnishelf provision add-printer` against a real cloud (uvicorn, no boxes, no zeroconf): the push
starts from the box's own config (its profile, the devices and settings pushed before) and adds the
printer to it, in place of one already at that address."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.api import create_app
from cloud.fleet import config_push
from cloud.fleet.models import ConfigPush
from omnishelf import cli
from provisioning import printers
from tests.access.conftest import World, world  # noqa: F401  (fixtures)
from tests.cloud.conftest import db_url, engine  # noqa: F401  (fixtures)
from tests.cloud.test_config_pushes import fleet  # noqa: F401  (fixture)
from tests.console.test_browser import Server
from tests.provisioning.test_printers import SocketPrinter

NODE = "st0002-k1"
"""A scan station on a Pi 5 (profile scan-station-pi5: one HID scanner, no printer)."""


def newest_push(fleet: World) -> ConfigPush:  # noqa: F811
    with Session(fleet.engine) as s:
        push = s.scalars(select(ConfigPush).where(ConfigPush.node_id == NODE).order_by(ConfigPush.version.desc())).first()
        assert push is not None
        return push


def add_printer(server: Server, key: str, address: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("OMNISHELF_API_KEY", key)
    return cli.main(["provision", "add-printer", NODE, address, "--cloud", server.url, "--rollback-after", "120"])


def test_add_printer_keeps_the_profile_devices_and_settings_pushed_before(
    fleet: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    first, second = SocketPrinter(), SocketPrinter()
    key = fleet.keys["hq"]
    try:
        # HQ pushed a receipt printer and a telemetry interval to the station earlier.
        with service.write_session(fleet.engine) as s, s.begin():
            principal = service.principal_for_key(s, key)
            assert principal is not None
            config_push.push_config(s, principal, fleet.settings, nodes=[NODE], overrides={
                "telemetry_every_s": 30,
                "devices": [{"kind": "scanner", "source": "hid"},
                            {"kind": "printer", "name": "receipts", "host": "127.0.0.1", "port": first.port, "profile": "escpos-58mm"}],
            })
        with Server(create_app(fleet.settings, run_worker=False, engine=fleet.engine)) as server:
            assert add_printer(server, key, f"127.0.0.1:{second.port}", monkeypatch) == 0
            out = capsys.readouterr().out
            assert out.startswith(f"test page printed; printer 127.0.0.1:{second.port} pushed to {NODE} "
                                  "(profile scan-station-pi5, 3 devices; batch ")
            push = newest_push(fleet)
            assert (push.version, push.profile, push.config["telemetry_every_s"]) == (2, "scan-station-pi5", 30)
            assert push.config["devices"] == [
                {"kind": "scanner"},
                {"kind": "printer", "name": "receipts", "host": "127.0.0.1", "port": first.port, "profile": "escpos-58mm"},
                {"kind": "printer", "host": "127.0.0.1", "port": second.port},  # the default name, "printer"
            ]
            assert second.jobs == [printers.test_page(f"omnishelf: printer for {NODE}")]

            # The same printer again (moved to another paper width by hand, say): replaced, not doubled.
            assert add_printer(server, key, f"127.0.0.1:{first.port}", monkeypatch) == 0
            push = newest_push(fleet)
            assert push.version == 3
            assert [(d.get("name"), d.get("port")) for d in push.config["devices"]] == [
                (None, None), ("receipts", first.port), (None, second.port)]
            assert push.config["telemetry_every_s"] == 30

            # A box the key may not see, or that was never claimed: one line, nothing printed.
            assert cli.main(["provision", "add-printer", "st0009-k1", f"127.0.0.1:{first.port}", "--cloud", server.url]) == 2
            assert capsys.readouterr().err.startswith("omnishelf: error: cannot read st0009-k1's config from the cloud: ")
            assert len(first.jobs) == 1
    finally:
        first.close()
        second.close()


def test_devices_with_printer_names_a_new_printer_apart() -> None:
    from firmware_config import PrinterDevice

    devices = [{"kind": "simulator"}, {"kind": "printer", "host": "10.0.0.5"}, {"kind": "printer", "name": "printer-2", "host": "10.0.0.6"}]
    added = printers.devices_with_printer(devices, PrinterDevice(kind="printer", host="10.0.0.7", port=9101))
    assert added[:3] == devices
    assert added[3] == {"kind": "printer", "name": "printer-3", "host": "10.0.0.7", "port": 9101}
    again = printers.devices_with_printer(devices, PrinterDevice(kind="printer", host="10.0.0.5"))
    assert again == [devices[0], {"kind": "printer", "name": "printer", "host": "10.0.0.5"}, devices[2]]
