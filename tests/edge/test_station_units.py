"""The station's parts on their own: reading codes, the offline verdicts, debouncing, the camera
driver's decoder against the raw one, and a camera that is not there (unavailable, then retried)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from broker.payloads import ParsedCode, TraceListsArgs, VerdictClass
from edge.agent import EdgeAgent
from edge.devices import OK, UNAVAILABLE
from edge.station.codes import CodeError, read_code
from edge.station.lists import offline_verdict
from edge.station.scanners import Debouncer, FrameDecoder
from edge.station.station_db import StationDb
from edge.station.testcard import Symbol, code_frame, write_video
from firmware_config import ConfigError, load_config, parse_config
from tests.conftest import Broker
from tests.edge.conftest import NODE, arun, until
from tests.edge.test_station import station_config

GTIN = "09506000134352"

EPC = "urn:epc:id:sgtin:95060001343.05.S1"  # biip's prefix table gives this GTIN an 11-digit company prefix
READS = [
    (f"]d201{GTIN}1730123110L001\x1d21S1", None,
     ParsedCode(form="element_string", gtin=GTIN, serial="S1", batch="L001", expiry=date(2030, 12, 31), epc=EPC)),
    (f"01{GTIN}21S1", "]d2", ParsedCode(form="element_string", gtin=GTIN, serial="S1", epc=EPC)),
    (f"(01){GTIN}(17)301200(21)S1", None, ParsedCode(form="hri", gtin=GTIN, serial="S1", expiry=date(2030, 12, 31), epc=EPC)),
    (f"https://id.gs1.org/01/{GTIN}/10/B2/21/S1", "]Q1",
     ParsedCode(form="digital_link", gtin=GTIN, serial="S1", batch="B2", epc=EPC)),
    ("9506000134352", "]E0", ParsedCode(form="ean", gtin=GTIN)),
    ("urn:epc:id:sgtin:9506000.013435.S1", None,
     ParsedCode(form="epc_urn", gtin=GTIN, serial="S1", epc="urn:epc:id:sgtin:9506000.013435.S1")),
]
BAD_READS = [
    ("0109506000134353", "AI (01) GTIN: expected check digit 2, found 3 in '09506000134353'"),
    ("hello", "No GS1 Application Identifier starts 'hell' in 'hello'"),
    ("https://example.com/x", "Digital Link 'https://example.com/x': Expected a primary identifier in the path, got '/x'."),
]


@pytest.mark.parametrize(("code", "symbology", "expected"), READS)
def test_codes_are_read(code: str, symbology: str | None, expected: ParsedCode) -> None:
    assert read_code(code, symbology) == expected


@pytest.mark.parametrize(("code", "message"), BAD_READS)
def test_unreadable_codes_say_why(code: str, message: str) -> None:
    with pytest.raises(CodeError) as info:
        read_code(code)
    assert str(info.value) == message


LISTS = TraceListsArgs.model_validate({
    "version": 7,
    "received": [{"gtin": GTIN, "serial": "OK1", "batch": "L1", "expiry": "2030-01-31"},
                 {"gtin": GTIN, "serial": "SOLD", "batch": "L1"}],
    "recalled_units": [{"gtin": GTIN, "serial": "R1", "reason": "tampered"}],
    "recalled_batches": [{"gtin": GTIN, "batch": "BAD", "reason": ""}],
    "known_bad": [{"gtin": GTIN, "serial": "CLONE", "verdict": "cloned", "reason": "seen in Chengdu and Harbin 10 minutes apart"}],
})

OFFLINE = [
    (f"01{GTIN}17300131 10L1\x1d21OK1".replace(" ", ""), "verify", VerdictClass.GENUINE, "received at this store (offline check; the cloud confirms when the link is back)"),
    (f"01{GTIN}10L2\x1d21OK1", "verify", VerdictClass.BATCH_OR_EXPIRY_MISMATCH, "printed batch/expiry L2/None differ from the received L1/2030-01-31"),
    (f"01{GTIN}21R1", "verify", VerdictClass.RECALLED, "this unit is recalled: tampered"),
    (f"01{GTIN}10BAD\x1d21OK9", "verify", VerdictClass.RECALLED, "batch BAD is recalled"),
    (f"01{GTIN}21CLONE", "sell", VerdictClass.CLONED, "seen in Chengdu and Harbin 10 minutes apart"),
    (f"01{GTIN}17200101\x1d21OK1".replace("\x1d", ""), "verify", VerdictClass.EXPIRED, "expired on 2020-01-01"),
    (f"01{GTIN}21NEVER", "verify", VerdictClass.NOT_FOR_SALE_HERE, "not among the units this store has received (offline check)"),
    (f"01{GTIN}21SOLD", "sell", VerdictClass.ALREADY_SOLD, "sold at this store before (offline record)"),
    (f"01{GTIN}21SOLD", "return", VerdictClass.GENUINE, "received at this store (offline check; the cloud confirms when the link is back)"),
    ("9506000134352", "verify", VerdictClass.UNTRACKED, "a product code, not a unit's: nothing to verify"),
    ("0109506000134353", "verify", VerdictClass.MALFORMED, "AI (01) GTIN: expected check digit 2, found 3 in '09506000134353'"),
]


@pytest.mark.parametrize(("code", "purpose", "verdict", "message"), OFFLINE)
def test_offline_verdicts_from_the_lists(tmp_path: Path, code: str, purpose: str, verdict: VerdictClass, message: str) -> None:
    db = StationDb(tmp_path / "station.db")
    assert db.put_list_part(7, 0, 1, LISTS.model_dump(mode="json")) == 4
    db.mark_sold(GTIN, "SOLD")
    v = offline_verdict(db, "0190c3a0-0000-7000-8000-000000000000", code, None, purpose, today=date(2026, 11, 28))
    assert (v.verdict, v.message, v.rule.value, v.provisional, v.evidence["list_version"]) == (verdict, message, "offline_cache", True, 7)
    db.close()


def test_a_list_in_parts_is_used_only_once_whole(tmp_path: Path) -> None:
    db = StationDb(tmp_path / "station.db")
    one = {**LISTS.model_dump(mode="json"), "version": 8, "parts": 2, "received": [{"gtin": GTIN, "serial": "NEW"}]}
    two = {**LISTS.model_dump(mode="json"), "version": 8, "part": 1, "parts": 2, "received": [], "known_bad": [],
           "recalled_units": [], "recalled_batches": []}
    assert db.put_list_part(7, 0, 1, LISTS.model_dump(mode="json")) == 4
    assert db.put_list_part(8, 0, 2, one) is None
    assert db.unit(GTIN, "OK1", None).received is not None  # version 7 still answers
    assert db.put_list_part(8, 1, 2, two) == 3
    assert (db.list_version, db.unit(GTIN, "OK1", None).received, db.unit(GTIN, "NEW", None).received) == (8, None, (None, None))
    db.close()


def test_local_sale_marks_outlive_a_list_that_does_not_know_the_sale_yet(tmp_path: Path) -> None:
    db = StationDb(tmp_path / "station.db")
    db.put_list_part(1, 0, 1, LISTS.model_dump(mode="json"))
    db.mark_sold(GTIN, "OK1")  # sold offline; the cloud has not heard of it
    db.put_list_part(2, 0, 1, {**LISTS.model_dump(mode="json"), "version": 2})
    assert db.unit(GTIN, "OK1", None).sold
    db.mark_sold(GTIN, "OK1", sold=False)  # returned
    assert not db.unit(GTIN, "OK1", None).sold
    db.mark_sold(GTIN, "OK1")
    db.put_list_part(3, 0, 1, {**LISTS.model_dump(mode="json"), "version": 3, "received": []})  # the cloud knows now
    assert db.list_counts()["sold_here_since"] == 0
    db.close()


def test_debouncer_takes_a_held_code_once() -> None:
    d = Debouncer(1.0)
    assert [d.new("A", t) for t in (0.0, 0.1, 0.9, 1.8, 3.0)] == [True, False, False, False, True]
    assert d.new("B", 3.1) and d.new("A", 3.2) is False


def test_camera_decoder_finds_each_configured_format_and_no_other() -> None:
    dm = code_frame(Symbol(f"(01){GTIN}(21)S1", gs1=True))
    ean = code_frame(Symbol("9506000134352", "ean13"))
    only_dm = FrameDecoder(["datamatrix"])
    assert [d.code for d in only_dm.decode(dm)] == [f"01{GTIN}21S1"]
    assert only_dm.decode(ean) == []
    with_zbar = FrameDecoder(["datamatrix", "ean13"], fallback_1d=True)
    found = with_zbar.decode(ean)
    assert [(d.code, d.symbology) for d in found] == [("9506000134352", "]E0")]
    assert with_zbar._zbar is not None
    pyzbar_only = with_zbar._pyzbar.decode(ean, symbols=with_zbar._zbar[0])
    assert [r.data for r in pyzbar_only] == [b"9506000134352"]


def test_a_missing_camera_is_unavailable_and_retried(broker: Broker, tmp_path: Path) -> None:
    video = tmp_path / "cam.avi"
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [
        {"kind": "scanner", "name": "cam", "source": "camera", "path": str(video)},
    ])

    async def main() -> None:
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())

        def state() -> tuple[str, Any]:
            info = agent.devices.infos()[0]
            return info.state, info.detail

        await until(lambda: state()[0] == UNAVAILABLE and "does not exist" in str(state()[1]), what="unavailable")
        assert state() == (UNAVAILABLE, f"driver failed: RuntimeError: {video} does not exist (camera unplugged?)")
        part = tmp_path / "part.avi"
        write_video(part, [Symbol(f"(01){GTIN}(21)S1", gs1=True)], hold=3, gap=1)
        part.rename(video)
        await until(lambda: state()[0] == OK, what="the camera back")
        await agent.stop()
        await asyncio.wait_for(task, 10)

    arun(main())


def test_the_station_example_config_loads() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "edge" / "examples" / "station.yaml")
    assert cfg.station.enabled and cfg.station.printer == "till"
    assert [(d.kind, d.name) for d in cfg.devices] == [("scanner", "counter-camera"), ("scanner", "handheld"), ("printer", "till")]


CONFIG_MISTAKES = [
    ("  - kind: scanner\n    source: camera\n", "box.yaml:6: field 'devices[0]': a camera scanner needs 'path' (a video device or file) or 'camera' (a capture index)"),
    ("  - kind: scanner\n    source: camera\n    camera: 0\n    formats: [qrcode, aztec]\n",
     "box.yaml:9: field 'devices[0].formats[1]': Input should be 'datamatrix', 'qrcode', 'ean13', 'ean8', 'upca', 'upce', "
     "'code128', 'databar', 'databar_expanded' or 'itf' (got 'aztec')"),
    ("  - kind: printer\n    connection: usb\n    usb_vendor: 0x04b8\n", "box.yaml:6: field 'devices[0]': a usb printer needs 'usb_product' as well as 'usb_vendor'"),
    ("  - kind: printer\n    connection: serial\n", "box.yaml:6: field 'devices[0]': a serial printer needs 'path'"),
]


@pytest.mark.parametrize(("devices", "problem"), CONFIG_MISTAKES)
def test_station_config_mistakes_name_file_line_and_field(devices: str, problem: str) -> None:
    text = "node_id: st1-k1\nstore_id: st1\nbroker: {url: 'mqtt://127.0.0.1'}\nstation: {enabled: true}\ndevices:\n" + devices
    with pytest.raises(ConfigError) as info:
        parse_config(text, "box.yaml")
    assert info.value.problems == [problem]


class _Handle:
    def __init__(self) -> None:
        self.states: list[tuple[str, str | None]] = []

    def ok(self, detail: str | None = None) -> None:
        self.states.append((OK, detail))

    def unavailable(self, detail: str) -> None:
        self.states.append((UNAVAILABLE, detail))


def test_serial_scanner_on_a_terminal_reads_lines_with_their_aim_prefix() -> None:
    """A pseudo-terminal stands in for the serial port: the driver sets it raw at the configured baud."""
    import os
    import termios

    from edge.drivers import DriverContext
    from edge.station.scanners import Decoded, LineScanner
    from firmware_config import ScannerDevice

    master, slave = os.openpty()
    path = Path(os.ttyname(slave))
    got: list[Decoded] = []

    async def sink(_cfg: ScannerDevice, d: Decoded) -> None:
        got.append(d)

    async def publish(*_a: Any) -> Any:
        raise AssertionError("scanners hand codes to the station, they do not publish")

    async def main() -> None:
        cfg = ScannerDevice(kind="scanner", name="ser", source="serial", path=path, baud=115200)
        handle = _Handle()
        driver = LineScanner(cfg, DriverContext(node_id=NODE, device=handle, publish=publish), sink, path)
        task = asyncio.create_task(driver.run())
        await until(lambda: bool(handle.states), what="the port open")
        assert termios.tcgetattr(slave)[4] == termios.B115200
        os.write(master, f"]C101{GTIN}10L1\x1d21S1\r\n9506000134352\r".encode())
        os.write(master, b"\n")
        await until(lambda: len(got) == 2, what="two codes")
        assert got == [Decoded(f"01{GTIN}10L1\x1d21S1", "]C1"), Decoded("9506000134352", None)]
        assert handle.states == [(OK, f"reading {path}")]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        arun(main())
    finally:
        os.close(master)
        os.close(slave)
