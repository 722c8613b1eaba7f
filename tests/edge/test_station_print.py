"""The station's print queue against a real TCP peer that speaks the printer's side of ESC/POS: it
answers the paper status query and records every byte of every job."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

from broker.envelope import MessageType
from broker.payloads import VerdictClass, VerdictRule
from edge.agent import EdgeAgent
from edge.station.printing import PAPER_QUERY
from edge.station.station_db import StationDb
from tests.conftest import Broker
from tests.edge.conftest import NODE, Cloud, arun, until
from tests.edge.test_station import GTIN, api, station_config, station_of, verdict_env

PAPER_OK = 0x12
PAPER_OUT = 0x72


class PrinterPeer:
    """A network receipt printer on 127.0.0.1: one connection at a time, like the real ones."""

    def __init__(self, port: int = 0) -> None:
        self.paper = True
        self.jobs: list[bytes] = []
        self.queries = 0
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                got = b""
                while len(got) < len(PAPER_QUERY):
                    chunk = conn.recv(len(PAPER_QUERY) - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got != PAPER_QUERY:
                    self.jobs.append(got + self._rest(conn))
                    continue
                self.queries += 1
                conn.sendall(bytes([PAPER_OK if self.paper else PAPER_OUT]))
                job = self._rest(conn)
                if job:
                    self.jobs.append(job)

    @staticmethod
    def _rest(conn: socket.socket) -> bytes:
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data

    def stop(self) -> None:
        # shutdown wakes the thread blocked in accept(); close alone leaves the port listening.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def test_receipts_and_labels_reach_the_printer_exactly_once(broker: Broker, tmp_path: Path) -> None:
    peer = PrinterPeer()
    peer.paper = False
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [
        {"kind": "printer", "name": "till", "host": "127.0.0.1", "port": peer.port, "timeout_s": 2},
    ], receipt_header="Omnishelf Demo Store")

    async def state(agent: EdgeAgent) -> dict[str, Any]:
        _, body = await api(agent, "GET", "/station/print/jobs")
        return body  # type: ignore[no-any-return]

    async def main() -> None:
        nonlocal peer
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        station = station_of(agent)
        # Out of paper: said plainly on the API, nothing sent.
        await until(lambda: station.printer_states["till"]["state"] == "out_of_paper", what="out of paper")
        assert station.printer_states["till"]["detail"] == f"out of paper: load a roll in the printer at 127.0.0.1:{peer.port}"
        _, scan = await api(agent, "POST", "/station/scans", {"code": "]d20109506000134352\x1d21SER1", "purpose": "sell", "wait_s": 5})
        status, job = await api(agent, "POST", "/station/print/receipt", {"scan_ids": [scan["scan_id"]], "request_id": "sale-1"})
        assert (status, job["state"], job["new"]) == (200, "queued", True)
        _, retry = await api(agent, "POST", "/station/print/receipt", {"scan_ids": [scan["scan_id"]], "request_id": "sale-1"})
        assert (retry["id"], retry["new"]) == (job["id"], False)
        await until(lambda: (station.db.job(job["id"]) or job).attempts >= 2, what="retries")
        assert peer.jobs == [] and station.db.job(job["id"]).state == "queued"  # type: ignore[union-attr]
        # Paper loaded: the job prints, once, byte for byte what was queued.
        peer.paper = True
        await until(lambda: station.db.job(job["id"]).state == "printed", what="printed")  # type: ignore[union-attr]
        data = station.db.job(job["id"]).data  # type: ignore[union-attr]
        # The peer records a job when the station closes the connection, just after marking it printed.
        await until(lambda: len(peer.jobs) >= 1, what="the printer to hold the receipt")
        assert peer.jobs == [data]
        assert b"Omnishelf Demo Store" in data and b"Serial SER1" in data and data.endswith(b"\x1dV\x00")  # full cut
        assert b"1P0https://id.gs1.org/01/09506000134352/21/SER1" in data  # the verified code, as a native QR
        assert (await state(agent))["printers"]["till"]["state"] == "ready"
        # The printer goes away: the label waits, the API says why, and it prints when the printer is back.
        peer.stop()
        _, label = await api(agent, "POST", "/station/print/label", {"scan_id": scan["scan_id"]})
        await until(lambda: station.printer_states["till"]["state"] == "offline", what="offline")
        assert station.printer_states["till"]["detail"].startswith(f"offline: cannot reach the printer at 127.0.0.1:{peer.port}")
        # The printer's state is told before the job's own attempt records its error.
        await until(lambda: (station.db.job(label["id"]).last_error or "").startswith("offline: "),  # type: ignore[union-attr]
                    what="the label's attempt failed offline")
        peer = PrinterPeer(peer.port)
        await until(lambda: station.db.job(label["id"]).state == "printed", what="label printed")  # type: ignore[union-attr]
        await until(lambda: len(peer.jobs) >= 1, what="the printer to hold the label")
        assert peer.jobs == [station.db.job(label["id"]).data]  # type: ignore[union-attr]
        status, refused = await api(agent, "POST", "/station/print/label", {"scan_id": "0190c3a0-0000-7000-8000-000000000000"})
        assert status == 409 and refused["error"].endswith("has no verdict yet: print once it is checked")
        await agent.stop()
        await asyncio.wait_for(task, 10)
        peer.stop()

    arun(main())


def test_a_restart_mid_job_never_prints_twice_and_loses_nothing(tmp_path: Path) -> None:
    db = StationDb(tmp_path / "station.db")
    first, _ = db.enqueue("till", "receipt", b"job-1", scan_id=None, request_id=None)
    second, _ = db.enqueue("till", "receipt", b"job-2", scan_id=None, request_id=None)
    db.job_sending(first.id)  # the box dies here, after the commit and around the write
    db.close()
    db = StationDb(tmp_path / "station.db")
    assert db.jobs_uncertain_after_restart() == [first.id]
    nxt = db.next_job("till")
    assert nxt is not None and nxt.id == second.id  # the uncertain job is not sent again by itself
    assert db.job(first.id).state == "uncertain"  # type: ignore[union-attr]
    db.job_sending(second.id)
    db.job_printed(second.id)
    assert db.next_job("till") is None
    again = db.requeue(first.id)  # the clerk saw no receipt: one request reprints it
    assert again is not None and again.state == "queued" and db.next_job("till") == again
    db.close()


def test_a_final_genuine_sale_prints_its_receipt_by_itself(broker: Broker, tmp_path: Path) -> None:
    """auto_print: the cloud's final `genuine` for a sale queues the receipt; a provisional one does not."""
    receipts = tmp_path / "receipts.bin"
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [
        {"kind": "printer", "name": "till", "connection": "file", "path": str(receipts)},
    ], auto_print=True)

    async def main() -> None:
        cloud = await Cloud(broker).start()
        await cloud.set_online(False)
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        station = station_of(agent)
        _, scan = await api(agent, "POST", "/station/scans", {"code": f"01{GTIN}21SER7", "purpose": "sell", "wait_s": 5})
        assert scan["verdict"]["provisional"] and station.db.jobs(10) == []
        await cloud.set_online(True)
        await until(lambda: bool(cloud.of(MessageType.SCAN)), what="the scan")
        command = verdict_env(cloud.of(MessageType.SCAN)[0], VerdictClass.GENUINE, VerdictRule.COMMISSIONED_UNIT)
        await cloud.resend(command)
        try:
            await until(lambda: [j.state for j in station.db.jobs(10)] == ["printed"], what="the receipt printed")
        except AssertionError:
            raise AssertionError(f"jobs: {[(j.kind, j.state, j.last_error) for j in station.db.jobs(10)]}") from None
        job = station.db.jobs(10)[0]
        assert (job.kind, job.scan_id) == ("receipt", scan["scan_id"])
        assert receipts.read_bytes() == job.data
        assert f"1P0https://id.gs1.org/01/{GTIN}/21/SER7".encode() in job.data
        await agent.stop()
        await asyncio.wait_for(task, 10)
        await cloud.close()

    arun(main())


def test_the_queue_survives_a_restart_and_prints_each_job_once(broker: Broker, tmp_path: Path) -> None:
    peer = PrinterPeer()
    port = peer.port
    peer.stop()  # the printer is off while the jobs are queued
    cfg = station_config(tmp_path, broker, broker.add_node(NODE), [
        {"kind": "printer", "name": "till", "host": "127.0.0.1", "port": port, "timeout_s": 2},
    ])

    async def first_run() -> list[int]:
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        _, scan = await api(agent, "POST", "/station/scans", {"code": f"01{GTIN}21SER8", "wait_s": 5})
        ids = []
        for _ in range(3):
            _, job = await api(agent, "POST", "/station/print/label", {"scan_id": scan["scan_id"]})
            ids.append(job["id"])
        station = station_of(agent)
        await until(lambda: station.printer_states["till"]["state"] == "offline", what="offline")
        await agent.stop()
        await asyncio.wait_for(task, 10)
        return ids

    async def second_run(ids: list[int]) -> list[bytes]:
        agent = EdgeAgent(cfg)
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        station = station_of(agent)
        assert [station.db.job(i).state for i in ids] == ["queued"] * 3  # type: ignore[union-attr]
        back = PrinterPeer(port)
        await until(lambda: all(station.db.job(i).state == "printed" for i in ids), what="all printed")  # type: ignore[union-attr]
        data = [station.db.job(i).data for i in ids]  # type: ignore[union-attr]
        await agent.stop()
        await asyncio.wait_for(task, 10)
        assert back.jobs == data  # in order, each once
        back.stop()
        return data

    ids = arun(first_run())
    assert len(arun(second_run(ids))) == 3
