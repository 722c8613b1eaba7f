"""docs/multi-host.md, run on this machine: every host is its own process on its own ports.

    broker host    omnishelf broker --tls-cert … --tls-key …         (TLS only)
    API host 1, 2  omnishelf cloud serve --no-worker                  (each its own data dir)
    worker 1, 2    omnishelf cloud worker                             (each its own data dir and broker user)
    two boxes      omnishelf edge run                                 (mqtts://, broker.ca_file)
    shared         one PostgreSQL database; one catalogue directory (the "NFS mount")

Checked: a catalogue import on API host 1 reaches the boxes (one fetches from API host 2, which
did not import it); both workers announce, and each box gets one announcement; the boxes'
messages are stored once across the workers (exact ledger, and the workers' own counts add up to
it); a worker's clean stop delays nothing; a box's death is seen while a worker is down; a worker
rejoins by starting; a console session made on API host 1 works on API host 2, and ends there
for both.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from broker.mosquitto import free_port
from firmware_config import (
    BackoffConfig,
    BrokerConfig,
    CatalogueConfig,
    LocalApiConfig,
    NodeConfig,
    OutboxConfig,
    SimulatorDevice,
    write_config,
)
from tests.broker.test_tls import HOST, Pki, make_pki
from tests.system.harness import Proc, wait_for

ADMIN_PASSWORD = "multi-host-admin-pw"
SKU = "TEA-MH-1"
DELAY_BOUND_S = 2.5
"""A message created while a worker stops is stored within this (measured well under 0.5 s here).
Far below what a message given to a gone worker would take: the gap grace is set to 120 s below,
so such a message would not arrive in this test at all."""


class Site:
    """The hosts of docs/multi-host.md as processes, on one PostgreSQL database."""

    def __init__(self, tmp: Path, database_url: str, pki: Pki) -> None:
        self.tmp = tmp
        self.db_url = database_url
        self.pki = pki
        self.engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
        self.procs: list[Proc] = []
        self.shared_catalogue = tmp / "nfs" / "catalogue"  # what every cloud host mounts at this path
        self.passwords = {"cloud-1": "w1-secret-pw", "cloud-2": "w2-secret-pw", "st-a": "box-a-pw", "st-b": "box-b-pw"}
        self.tls_port = free_port()
        self.broker_url = f"mqtts://{HOST}:{self.tls_port}"
        self.api_ports = {"api-1": free_port(), "api-2": free_port()}
        self.local_api = {"st-a": free_port(), "st-b": free_port()}
        self.worker_runs: dict[str, list[Proc]] = {"cloud-1": [], "cloud-2": []}

    # -- processes ---------------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        import os

        p = Proc(name, args, {**os.environ, **(env or {})}, self.tmp / f"{name}-{len(self.procs)}.log")
        self.procs.append(p)
        return p

    def broker(self) -> dict[str, Any]:
        creds = self.tmp / "broker" / "credentials.json"
        creds.parent.mkdir(parents=True)
        creds.write_text(json.dumps({
            "cloud": {h: self.passwords[h] for h in ("cloud-1", "cloud-2")},
            "nodes": {n: self.passwords[n] for n in ("st-a", "st-b")},
        }))
        proc = subprocess.Popen(
            [sys.executable, "-m", "omnishelf.cli", "broker", "--credentials", str(creds), "--data-dir",
             str(self.tmp / "broker" / "data"), "--tls-cert", str(self.pki.cert), "--tls-key", str(self.pki.key),
             "--tls-port", str(self.tls_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.broker_proc = proc
        assert proc.stdout is not None
        started: dict[str, Any] = json.loads(proc.stdout.readline())
        return started

    def cloud_env(self, host: str) -> dict[str, str]:
        """One cloud host's settings: its own data dir; the database, broker and catalogue shared."""
        env = {
            "OMNISHELF_DATA_DIR": str(self.tmp / host),
            "OMNISHELF_DATABASE_URL": self.db_url,
            "OMNISHELF_CATALOGUE_DIR": str(self.shared_catalogue),
            "OMNISHELF_BROKER_URL": self.broker_url,
            "OMNISHELF_BROKER_CA_FILE": str(self.pki.ca),
            "OMNISHELF_CATALOGUE_POLL_S": "0.5",
            # Long: a message lost to a stopping worker would stay missing here, never quietly replayed.
            "OMNISHELF_GAP_GRACE_S": "120",
        }
        if host in self.passwords:
            env |= {"OMNISHELF_BROKER_USERNAME": host, "OMNISHELF_BROKER_PASSWORD": self.passwords[host]}
        return env

    def run(self, host: str, *args: str, stdin: str | None = None) -> str:
        """A command by hand on `host` (as an operator would run it there); its output."""
        import os

        res = subprocess.run([sys.executable, "-m", "omnishelf.cli", *args], input=stdin, capture_output=True,
                             text=True, env={**os.environ, **self.cloud_env(host)}, timeout=60)
        assert res.returncode == 0, f"{args} on {host}: {res.stderr}"
        return res.stdout

    def api(self, host: str) -> Proc:
        return self.spawn(host, ["cloud", "serve", "--no-worker", "--host", "127.0.0.1", "--port",
                                 str(self.api_ports[host])], self.cloud_env(host))

    def api_url(self, host: str) -> str:
        return f"http://127.0.0.1:{self.api_ports[host]}"

    def worker(self, host: str) -> Proc:
        p = self.spawn(host, ["cloud", "worker"], self.cloud_env(host))
        self.worker_runs[host].append(p)
        return p

    def box(self, node: str, cloud: str, scans_per_s: float) -> Proc:
        folder = self.tmp / node
        folder.mkdir(exist_ok=True)
        (folder / "box.secret").write_text(self.passwords[node])
        (folder / "broker-ca.pem").write_bytes(self.pki.ca.read_bytes())
        cfg = NodeConfig(
            node_id=node,
            store_id="st-mh",
            data_dir=Path("state"),
            broker=BrokerConfig(url=self.broker_url, password_file=Path("box.secret"), ca_file=Path("broker-ca.pem")),
            backoff=BackoffConfig(base_s=0.2, cap_s=2),
            devices=(SimulatorDevice(kind="simulator", scans_per_s=scans_per_s, orders_per_min=0, stock_every_s=0),),
            telemetry_every_s=0,
            outbox=OutboxConfig(path=Path("outbox.db")),
            catalogue=CatalogueConfig(cloud_url=self.api_url(cloud), fetch_timeout_s=5),
            local_api=LocalApiConfig(port=self.local_api[node]),
        )
        config = write_config(cfg, folder / "box.yaml")
        return self.spawn(f"box-{node}", ["edge", "run", "--config", str(config)])

    def box_last_seq(self, node: str) -> int:
        out = subprocess.run([sys.executable, "-m", "omnishelf.cli", "edge", "status", "--config",
                              str(self.tmp / node / "box.yaml")], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return int(json.loads(out.stdout)["last_seq"])

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        if getattr(self, "broker_proc", None) is not None:
            self.broker_proc.kill()
            self.broker_proc.wait()
        self.engine.dispose()

    # -- what the database says --------------------------------------------------------------------

    def logs(self, *prefixes: str, lines: int = 40) -> str:
        """The last `lines` of each process log whose name starts with one of `prefixes`."""
        out = []
        for log in sorted(self.tmp.glob("*.log")):
            if log.name.startswith(prefixes):
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name}:\n" + "\n".join(tail))
        return "\n".join(out)

    def rows(self, sql: str, **params: object) -> list[Any]:
        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), params).all())

    def online(self, node: str) -> bool | None:
        found = self.rows("SELECT online FROM nodes WHERE id = :n", n=node)
        return None if not found else bool(found[0][0])

    def stored_seqs(self, node: str) -> list[int]:
        return [int(r[0]) for r in self.rows(
            "SELECT seq FROM ingested_messages WHERE node = :n AND type NOT IN ('birth', 'death') ORDER BY seq", n=node)]

    def has_seq(self, node: str, seq: int) -> bool:
        return bool(self.rows("SELECT 1 FROM ingested_messages WHERE node = :n AND seq = :s AND type = 'scan'",
                              n=node, s=seq))

    def assert_stored_once(self, node: str) -> int:
        """The ledger holds each message the broker accepted from `node` exactly once, and nothing
        else (a message still pending on the stopped box may have arrived or not: it goes on the next
        start). Returns how many are stored."""
        import sqlite3

        db = sqlite3.connect(f"file:{self.tmp / node / 'outbox.db'}?mode=ro", uri=True)
        try:
            box = {state: {(int(seq), str(msg_id)) for seq, msg_id in rows} for state, rows in (
                (st, db.execute("SELECT seq, msg_id FROM outbox WHERE state = ?", (st,)).fetchall())
                for st in ("acked", "pending", "refused"))}
        finally:
            db.close()
        stored = [(int(r[0]), str(r[1])) for r in self.rows(
            "SELECT seq, msg_id FROM ingested_messages WHERE node = :n AND type NOT IN ('birth', 'death') ORDER BY seq",
            n=node)]
        assert len(stored) == len({seq for seq, _ in stored}), f"{node}: a seq was stored twice"
        missing = sorted(box["acked"] - set(stored))
        assert not missing, f"{node}: {len(missing)} accepted messages not stored, first {missing[:5]}"
        extra = sorted(set(stored) - box["acked"] - box["pending"])
        assert not extra, f"{node}: stored messages the box never sent: {extra[:5]}"
        assert not box["refused"], f"{node}: the broker refused {len(box['refused'])} message(s)"
        return len(stored)

    def worst_delay(self, since: datetime) -> tuple[float, int]:
        """(longest box -> database receipt, messages) over the scans created since `since`."""
        rows = self.rows("SELECT ts, received_at FROM ingested_messages WHERE type = 'scan' AND ts >= :t", t=since)
        return max(((r[1] - r[0]).total_seconds() for r in rows), default=0.0), len(rows)


def stopped_stats(proc: Proc) -> dict[str, Any]:
    """The counters a worker logs when it stops; fails if it kept its broker session (unclean)."""
    lines = [x for x in proc.log.read_text().splitlines() if ": stopped" in x]
    assert lines, proc.tail()
    assert "keeping its broker session" not in lines[-1], lines[-1]
    stats: dict[str, Any] = ast.literal_eval(lines[-1][lines[-1].index("(") + 1 : lines[-1].rindex(")")])
    return stats


def acks_in_outbox(outbox: Path, msg_id: object) -> int:
    """How many acks of this command the box ever queued (its own record, read while it runs)."""
    import sqlite3

    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM outbox WHERE type = 'ack' AND corr = ?", (str(msg_id),)).fetchone()[0])
    finally:
        db.close()


def consuming(proc: Proc) -> bool:
    return proc.log.exists() and ": consuming from mqtts://" in proc.log.read_text()


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def sign_in(api: str) -> str:
    """A console session made the way a browser makes one; returns the session cookie's value."""
    form = httpx.get(f"{api}/console/login", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text[:500]
    resp = httpx.post(f"{api}/console/login", timeout=10, cookies=form.cookies,
                      data={"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token.group(1)})
    assert resp.status_code == 303, resp.text[:500]
    return resp.cookies["omnishelf_session"]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def site(tmp_path: Path, db_url: str, pki: Pki) -> Iterator[Site]:
    s = Site(tmp_path, db_url, pki)
    try:
        yield s
    finally:
        s.close()


def _catalogue_file(tmp: Path) -> tuple[Path, Path]:
    from PIL import Image

    images = tmp / "import-images"
    images.mkdir()
    Image.new("RGB", (64, 48), (30, 120, 60)).save(images / "tea.png")
    csv = tmp / "products.csv"
    csv.write_text(f"sku,name_en,name_zh,list_price,images\n{SKU},Longjing tea (multi-host),龙井茶,168.00,tea.png\n")
    return csv, images


def run_topology(site: Site, *, rounds: int, scans_per_s: float) -> None:
    started = site.broker()
    assert started["listeners"] == [site.broker_url.replace(HOST, "127.0.0.1")], "TLS only: no plain listener"
    site.run("api-1", "cloud", "migrate")
    apis = [site.api("api-1"), site.api("api-2")]
    workers = {"cloud-1": site.worker("cloud-1"), "cloud-2": site.worker("cloud-2")}
    site.run("api-1", "users", "add", "--username", "admin", "--role", "admin", "--password-stdin",
             stdin=ADMIN_PASSWORD + "\n")
    boxes = {"st-a": site.box("st-a", "api-2", scans_per_s), "st-b": site.box("st-b", "api-1", scans_per_s)}
    for host, w in workers.items():
        wait_for(lambda w=w: consuming(w), 60, f"{host} consuming over TLS")  # type: ignore[misc]
    for node in boxes:
        wait_for(lambda node=node: site.online(node) is True, 60, f"{node} online")  # type: ignore[misc]
    for host in site.api_ports:
        wait_for(lambda host=host: http_ok(f"{site.api_url(host)}/health"), 60, f"{host} answering")  # type: ignore[misc]

    # -- a catalogue import on API host 1 reaches both boxes ----------------------------------------
    csv, images = _catalogue_file(site.tmp)
    assert "new catalogue version 1" in site.run("api-1", "catalogue", "import", str(csv), "--images", str(images),
                                                "--no-progress")
    for node in boxes:
        local = f"http://127.0.0.1:{site.local_api[node]}"
        try:
            wait_for(lambda local=local: http_ok(f"{local}/products/{SKU}"), 30, f"{node} serving {SKU}")  # type: ignore[misc]
        except AssertionError as exc:
            # Seen once in a full run and never alone: say what the box and the workers logged.
            raise AssertionError(f"{exc}\n{site.logs(f'box-{node}', 'cloud-', 'api-')}") from None
        product = httpx.get(f"{local}/products/{SKU}", timeout=5).json()
        assert product["name_zh"] == "龙井茶"
        image = product["images"][0]["sha256"]
        # st-a fetches from API host 2, which never saw the import: the shared directory serves it.
        wait_for(lambda local=local, image=image: http_ok(f"{local}/images/{image}"), 30, f"{node}'s image")  # type: ignore[misc]
    # Both workers ran the announcer; the keyed command made it one announcement per box, delivered once.
    announced = site.rows("SELECT node, status, msg_id FROM downlink WHERE type = 'catalog' ORDER BY node")
    assert [(n, s) for n, s, _ in announced] == [("st-a", "delivered"), ("st-b", "delivered")]
    for node, _, msg_id in announced:
        assert acks_in_outbox(site.tmp / node / "outbox.db", msg_id) == 1, f"{node} handled the announcement once"

    for _ in range(rounds):
        for leaving, staying in (("cloud-1", "cloud-2"), ("cloud-2", "cloud-1")):
            # -- a clean stop of one worker delays nothing -------------------------------------------
            since = datetime.now(UTC) - timedelta(seconds=0.5)
            assert workers[leaving].stop() == 0
            stopped_stats(workers[leaving])  # it ended its broker session: nothing is queued for it
            # Markers: messages the boxes create from now on, stored by the other worker alone.
            marks = {node: site.box_last_seq(node) + int(scans_per_s) for node in boxes}
            for node, mark in marks.items():
                wait_for(lambda node=node, mark=mark: site.has_seq(node, mark), 20, f"{node} seq {mark} stored")  # type: ignore[misc]
                # One worker now takes everything in order: with the marker stored, so is all before it.
                # A share left queued for the stopped worker (no clean stop) would be missing here.
                missing = set(range(1, mark + 1)) - set(site.stored_seqs(node))
                assert not missing, f"{node}: seqs {sorted(missing)[:10]} not stored while {leaving} is away"
            worst, counted = site.worst_delay(since)
            print(f"{leaving} stopped: {counted} messages since, worst box -> database {worst * 1000:.0f} ms")
            assert counted >= 2 * scans_per_s, counted
            assert worst < DELAY_BOUND_S, f"a message waited {worst:.2f} s while {leaving} stopped"

            # -- a box's death is seen while a worker is down ----------------------------------------
            if leaving == "cloud-1":
                boxes["st-b"].kill()
                wait_for(lambda: site.online("st-b") is False, 10, f"st-b's death seen by {staying} alone")
                boxes["st-b"] = site.box("st-b", "api-1", scans_per_s)
                wait_for(lambda: site.online("st-b") is True, 30, "st-b back")

            # -- it rejoins by starting --------------------------------------------------------------
            workers[leaving] = site.worker(leaving)
            wait_for(lambda w=workers[leaving]: consuming(w), 60, f"{leaving} back")  # type: ignore[misc]

    # -- stored once across the workers -----------------------------------------------------------------
    for node, box in boxes.items():
        assert box.stop() == 0
        wait_for(lambda node=node: site.online(node) is False, 20, f"{node} offline after its clean stop")  # type: ignore[misc]
    for w in workers.values():
        assert w.stop() == 0
    for node in boxes:
        assert site.assert_stored_once(node) > 2 * scans_per_s  # the markers alone make more
    # Nothing was repaired behind the test's back: no worker asked a box to replay, nothing lost.
    # (Rows marked historical are fine: what the killed box had pending went in its next session.)
    stats = [stopped_stats(p) for runs in site.worker_runs.values() for p in runs]
    assert sum(st["rebirths_sent"] + st["lost_seqs"] for st in stats) == 0, "nothing needed a replay"
    assert site.rows("SELECT sum(lost_seqs) FROM nodes")[0][0] == 0
    per_worker = {h: sum(stopped_stats(p)["stored"] for p in runs) for h, runs in site.worker_runs.items()}
    total = site.rows("SELECT count(*) FROM ingested_messages")[0][0]
    assert sum(per_worker.values()) == total, per_worker
    assert all(n > 0 for n in per_worker.values()), f"both workers took a share: {per_worker}"

    # -- the API hosts answer alike, and a session is the same on both ---------------------------------
    cookie = sign_in(site.api_url("api-1"))
    one, two = (httpx.Client(base_url=site.api_url(h), cookies={"omnishelf_session": cookie}, timeout=10)
                for h in ("api-1", "api-2"))
    with one, two:
        for path in ("/nodes", f"/catalogue/products/{SKU}", "/catalogue/version"):
            a, b = one.get(path), two.get(path)
            assert (a.status_code, b.status_code) == (200, 200), (path, a.text[:200], b.text[:200])
            assert a.json() == b.json(), path
        page = two.get("/console/", follow_redirects=True)
        assert page.status_code == 200 and "/console/login" not in str(page.url), page.url
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf, page.text[:500]
        assert two.post("/console/logout", data={"csrf_token": csrf.group(1)}).status_code == 303
        assert one.get("/nodes").status_code == 401, "signed out on host 2 is signed out on host 1"
    for p in apis:
        assert p.stop() == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_api_hosts_two_workers_two_boxes_over_tls(site: Site) -> None:
    started = time.monotonic()
    run_topology(site, rounds=1, scans_per_s=10)
    assert time.monotonic() - started < 90


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_multi_host_soak(site: Site) -> None:
    """The same, with more traffic and each worker leaving and rejoining five times."""
    run_topology(site, rounds=5, scans_per_s=50)
