"""The traceability part of `omnishelf demo`: a factory and store GLNs, units commissioned three days
ago and received at two stores, then a scanning station (a simulated box, `st0003-k2`, on the real
bus) scans a genuine unit and a copy of a unit just sold 1,200 km away; the cloud answers each scan
with a `verdict` command the station receives (and acknowledges, as a box does)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from broker import topics
from broker.client import BrokerAddress, MqttConnection
from broker.envelope import Envelope, MessageType, decode, encode
from broker.payloads import AckData, BirthData, DeathData, ScanData, ScanPurpose, VerdictData
from gs1 import check_digit

STATION = "st0003-k2"
"""A scanning station at store st0003 (the demo's boxes st000x-k1 are kiosks)."""
GTIN = "09506000134352"
STATION_ITEMS = range(1, 6)


def station_gtin(item: int) -> str:
    """The GTIN of the demo camera station's item `item` (the video `omnishelf.demo` draws)."""
    body = f"0950600{item:06d}"
    return body + check_digit(body)


def _call(api: str, key: str, method: str, path: str, body: bytes | None = None,
          ctype: str = "application/json") -> Any:
    req = urllib.request.Request(f"{api}{path}", data=body, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


def master_data(api: str, key: str) -> list[str]:
    """Locations and commissioned units (idempotent: a second demo run on the same data changes nothing)."""
    if any(x["code"] == "fac-suzhou" for x in _call(api, key, "GET", "/trace/locations")):
        return [f"D{i:04d}" for i in range(1, 6)]
    _call(api, key, "POST", "/trace/locations/import", b"code,kind,name,gln,region,lat,lon\n"
          b"fac-suzhou,factory,Suzhou factory,9506000000015,east,31.30,120.62\n"
          b"st0001,store,,9506000000114,,0,0\nst0003,store,,9506000000138,,0,0\n", "text/csv")
    made = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    serials = [f"D{i:04d}" for i in range(1, 6)]
    rows = "".join(f"{GTIN},{s},L1,2031-12-31,fac-suzhou,{made}\n" for s in serials)
    _call(api, key, "POST", "/trace/commission", f"gtin,serial,batch,expiry,location,at\n{rows}".encode(), "text/csv")
    for serial, store in (("D0001", "st0001"), ("D0002", "st0003"), ("D0003", "st0003")):
        _call(api, key, "POST", "/trace/scans", json.dumps({
            "code": f"(01){GTIN}(21){serial}", "location": store, "purpose": "receive"}).encode())
    # The units on the video the demo's camera station (st0001-k1) reads: received at its store, so
    # its first pass sells them (genuine), later passes find them sold.
    station_rows = "".join(
        f"{station_gtin(i)},DEMO{i:04d},L{i:03d},2028-12-31,fac-suzhou,{made}\n" for i in STATION_ITEMS)
    _call(api, key, "POST", "/trace/commission", f"gtin,serial,batch,expiry,location,at\n{station_rows}".encode(),
          "text/csv")
    for i in STATION_ITEMS:
        _call(api, key, "POST", "/trace/scans", json.dumps({
            "code": f"(01){station_gtin(i)}(21)DEMO{i:04d}", "location": "st0001", "purpose": "receive"}).encode())
    # D0001 is sold in Shanghai now: its code turning up in Shenzhen next is a copy.
    _call(api, key, "POST", "/trace/scans", json.dumps({
        "code": f"(01){GTIN}(21)D0001", "location": "st0001", "purpose": "sell", "station": "till-1"}).encode())
    return serials


async def _station(broker_url: str, password: str, api: str, key: str) -> list[VerdictData]:
    got: dict[Any, VerdictData] = {}
    pending: list[Envelope] = []

    def on_message(msg: Any) -> None:
        if msg.topic == topics.dn(STATION, MessageType.VERDICT):
            env = decode(bytes(msg.payload), msg.topic)
            assert isinstance(env.data, VerdictData)
            got[env.corr] = env.data
            pending.append(env)

    conn = MqttConnection(BrokerAddress.from_url(broker_url), STATION, password, on_message=on_message)
    await conn.connect()
    try:
        await conn.subscribe([topics.node_dn_filter(STATION)])
        session = int(datetime.now(UTC).timestamp())
        seq = 0

        async def send(kind: MessageType, data: Any, corr: Any = None) -> Envelope:
            nonlocal seq
            if kind not in (MessageType.BIRTH, MessageType.DEATH):
                seq += 1
            env = Envelope(type=kind, node=STATION, session=session, seq=seq, data=data, corr=corr)
            await conn.publish(topics.up(STATION, kind.value), encode(env))
            return env

        await send(MessageType.BIRTH, BirthData(software_version="demo", config_hash="demo", store="st0003"))
        for _ in range(50):  # the birth creates the node; put it in its store
            await asyncio.sleep(0.1)
            try:
                _call(api, key, "PATCH", f"/nodes/{STATION}", json.dumps({"store": "st0003"}).encode())
                break
            except OSError:
                continue
        scans = [await send(MessageType.SCAN, ScanData(code=f"]d201{GTIN}1731123110L1\x1d21{s}", station="till-1",
                                                        purpose=ScanPurpose.SELL)) for s in ("D0002", "D0001")]
        for _ in range(100):
            while pending:
                cmd = pending.pop()
                await send(MessageType.ACK, AckData(ok=True), corr=cmd.msg_id)
            if all(s.msg_id in got for s in scans):
                break
            await asyncio.sleep(0.1)
        await send(MessageType.DEATH, DeathData())  # the station leaves: offline in the console, not stale
        return [got[s.msg_id] for s in scans if s.msg_id in got]
    finally:
        await conn.disconnect()


def run(api: str, key: str, broker_url: str, password: str) -> list[str]:
    """Set the data up, scan at the station; the banner's lines."""
    master_data(api, key)
    verdicts = asyncio.run(_station(broker_url, password, api, key))
    lines = [f"  traceability: station {STATION} scanned 2 codes over the bus; verdicts received:"]
    lines += [f"    {v.parsed.serial if v.parsed else v.code}: {v.verdict.value} ({v.rule.value}) - {v.message}"
              for v in verdicts]
    lines += [f"    console (journey, map, alerts): {api}/console/trace?code=(01){GTIN}(21)D0001",
              f"    curl -s -H 'Authorization: Bearer {key}' {api}/trace/alerts",
              f"    curl -s -H 'Authorization: Bearer {key}' '{api}/trace/items/(01){GTIN}(21)D0001'"]
    return lines
