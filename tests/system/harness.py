"""Real processes for end-to-end tests: `omnishelf cloud worker` and `omnishelf edge run`, talking
over a private Mosquitto, with the cloud ledger read straight from the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from firmware_config import BrokerConfig, LocalApiConfig, NodeConfig, OutboxConfig, SimulatorDevice, write_config
from tests.conftest import Broker


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll `cond` until true; return the seconds it took. Fails naming `what`."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "omnishelf.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop on SIGTERM within {timeout:.0f} s:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.alive:
            self.popen.kill()
        self.popen.wait()

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""


class System:
    """A broker, cloud workers and boxes as separate processes, for one test."""

    def __init__(self, tmp: Path, broker: Broker, db_url: str, *, broker_url: str | None = None,
                 ca_file: Path | None = None) -> None:
        """`broker_url` and `ca_file`: how boxes and workers reach a TLS broker (default: `broker.url`)."""
        self.tmp = tmp
        self.broker = broker
        self.db_url = db_url
        self.broker_url = broker_url or broker.url
        self.ca_file = ca_file
        self.engine = sa.create_engine(db_url)
        self.procs: list[Proc] = []
        self.passwords: dict[str, str] = {}

    # -- processes ---------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(name, args, {**os.environ, **(env or {})}, self.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    def migrate(self) -> None:
        p = self._spawn("migrate", ["cloud", "migrate"], {"OMNISHELF_DATABASE_URL": self.db_url})
        assert p.popen.wait(60) == 0, p.tail()

    def worker(self, host: str = "cloud-1", **env: str) -> Proc:
        if host not in self.passwords:
            self.passwords[host] = self.broker.add_cloud(host)
        return self._spawn(
            host,
            ["cloud", "worker"],
            {
                "OMNISHELF_DATABASE_URL": self.db_url,
                "OMNISHELF_BROKER_URL": self.broker_url,
                "OMNISHELF_BROKER_USERNAME": host,
                "OMNISHELF_BROKER_PASSWORD": self.passwords[host],
                **({"OMNISHELF_BROKER_CA_FILE": str(self.ca_file)} if self.ca_file else {}),
                **env,
            },
        )

    def box_config(self, node: str, *, burst: int = 0, scans_per_s: float = 0, keepalive_s: int = 30,
                   ca_file: Path | None = None) -> Path:
        """`ca_file` (default: the one this System was given) is copied beside the config and named
        relative to it, as a technician would."""
        if node not in self.passwords:
            self.passwords[node] = self.broker.add_node(node)
        secret = self.tmp / f"{node}.secret"
        secret.write_text(self.passwords[node])
        ca_source = ca_file or self.ca_file
        ca = None
        if ca_source is not None:
            ca = Path(f"{node}-ca.pem")
            (self.tmp / ca).write_bytes(ca_source.read_bytes())
        # Only scans (no telemetry), so a test knows exactly how many messages the box produced.
        devices = (
            (SimulatorDevice(kind="simulator", burst=burst, scans_per_s=scans_per_s, orders_per_min=0, stock_every_s=0),)
            if burst or scans_per_s
            else ()
        )
        cfg = NodeConfig(
            node_id=node,
            store_id="st-test",
            broker=BrokerConfig(url=self.broker_url, password_file=Path(secret.name), keepalive_s=keepalive_s, ca_file=ca),
            outbox=OutboxConfig(path=Path(node) / "outbox.db"),
            devices=devices,
            telemetry_every_s=0,
            local_api=LocalApiConfig(port=0),
        )
        return write_config(cfg, self.tmp / f"{node}.yaml")

    def box(self, node: str, **config: int | float | Path) -> Proc:
        return self._spawn(f"box-{node}-{len(self.procs)}", ["edge", "run", "--config", str(self.box_config(node, **config))])  # type: ignore[arg-type]

    def box_status(self, node: str) -> dict[str, int]:
        import json

        out = subprocess.run(
            [sys.executable, "-m", "omnishelf.cli", "edge", "status", "--config", str(self.tmp / f"{node}.yaml")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0 and "no outbox" in out.stderr:
            return {"last_seq": 0, "pending": 0}
        assert out.returncode == 0, out.stderr
        data: dict[str, int] = json.loads(out.stdout)
        return data

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        self.engine.dispose()

    def host_online(self, host: str = "cloud-1") -> bool | None:
        """The retained host state as a box sees it (None: never published)."""
        import asyncio

        from broker import topics
        from broker.client import BrokerAddress, MqttConnection
        from broker.envelope import decode
        from broker.payloads import HostStateData

        if "monitor" not in self.broker.layout.monitor_users:
            self.broker.layout.monitor_users["monitor"] = "monitor-pw"
            self.broker.process.reload()

        async def read() -> bool | None:
            got: list[bytes] = []
            conn = MqttConnection(
                BrokerAddress.from_url(self.broker_url, self.ca_file), "monitor", "monitor-pw",
                on_message=lambda m: got.append(bytes(m.payload)),
            )
            await conn.connect()
            await conn.subscribe([topics.host_state(host)])
            await asyncio.sleep(0.2)
            await conn.disconnect()
            if not got:
                return None
            data = decode(got[-1]).data
            assert isinstance(data, HostStateData)
            return data.online

        return asyncio.run(read())

    def fence(self, timeout: float = 60) -> None:
        """Publish a marker as the node `fence` and wait until the worker has stored it. The broker
        hands a worker its messages in the order it routed them and the worker commits batches in
        that order, so whatever was on its way before the marker (a redelivery, a duplicate) has
        been stored or refused by the time the marker is in the ledger."""
        import asyncio

        from broker import topics
        from broker.client import BrokerAddress, MqttConnection
        from broker.envelope import Envelope, encode
        from broker.payloads import ScanData
        from broker.topics import MessageType

        if "fence" not in self.passwords:
            self.passwords["fence"] = self.broker.add_node("fence")
        seq = len(self.ledger("fence")) + 1

        async def publish() -> None:
            conn = MqttConnection(BrokerAddress.from_url(self.broker_url, self.ca_file), "fence", self.passwords["fence"])
            await conn.connect()
            env = Envelope(type=MessageType.SCAN, node="fence", session=1, seq=seq,
                           data=ScanData(code="6901234567892", station="fence"))
            await conn.publish(topics.up("fence", "scan"), encode(env))
            await conn.disconnect()

        asyncio.run(publish())
        wait_for(lambda: len(self.ledger("fence")) >= seq, timeout, f"fence {seq} stored")

    # -- the cloud's view --------------------------------------------------------------------------

    def ledger(self, node: str) -> list[tuple[int, str]]:
        """(seq, msg_id) of every stored sequenced message of `node`, by seq."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.text(
                    "SELECT seq, msg_id FROM ingested_messages WHERE node = :n AND type NOT IN ('birth', 'death') ORDER BY seq"
                ),
                {"n": node},
            ).all()
        return [(int(r[0]), str(r[1])) for r in rows]

    def online(self, node: str) -> bool | None:
        with self.engine.connect() as c:
            row = c.execute(sa.text("SELECT online FROM nodes WHERE id = :n"), {"n": node}).first()
        return None if row is None else bool(row[0])

    def session(self, node: str) -> int | None:
        with self.engine.connect() as c:
            row = c.execute(sa.text("SELECT session FROM nodes WHERE id = :n"), {"n": node}).first()
        return None if row is None else int(row[0])

    def assert_complete(self, node: str, last_seq: int) -> None:
        """Every seq 1..last_seq stored exactly once, nothing else."""
        rows = self.ledger(node)
        seqs = [s for s, _ in rows]
        missing = sorted(set(range(1, last_seq + 1)) - set(seqs))
        assert not missing, f"{len(missing)} seqs missing, first {missing[:10]}"
        assert len(seqs) == len(set(seqs)) == last_seq, "a seq was stored twice"
        assert len({m for _, m in rows}) == last_seq, "a msg_id was stored twice"
