"""The REST API over a real database (and, for /health, a real worker on a real broker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.access.bootstrap import create_api_key
from cloud.api import create_app
from cloud.seed import DEMO_STORES, seed
from cloud.settings import Settings
from tests.cloud.conftest import box, cloud_settings
from tests.conftest import Broker


def poll(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_read_endpoints(engine: Engine) -> None:
    seed(engine)
    auth = {"Authorization": f"Bearer {create_api_key(engine, 'reader', 'hq')}"}
    settings = Settings(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    with TestClient(create_app(settings, run_worker=False, engine=engine), headers=auth) as client:
        regions = client.get("/regions").json()
        assert [r["code"] for r in regions] == ["east", "south"]

        stores = client.get("/stores").json()
        assert [s["code"] for s in stores] == ["st0001", "st0002", "st0003"]
        assert stores[0] | {"id": 0} == {
            "id": 0, "code": "st0001", "name": "Shanghai Nanjing Road", "lat": 31.235, "lon": 121.474,
            "timezone": "Asia/Shanghai", "region": "east",
        }

        nodes = client.get("/nodes").json()
        assert [n["id"] for n in nodes] == sorted(DEMO_STORES.values())
        assert set(nodes[0]) == {
            "id", "store", "online", "session", "last_seen", "software_version", "config_hash",
            "seq_contig", "seq_high", "lost_seqs",
        }
        assert nodes[0]["store"] == "st0001" and nodes[0]["online"] is False

        one = client.get("/nodes/st0002-k1")
        assert one.status_code == 200 and one.json()["store"] == "st0002"

        missing = client.get("/nodes/st9-k9")
        assert missing.status_code == 404 and "'st9-k9'" in missing.json()["detail"]

        health = client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "database": "ok", "worker": None}

        paths = client.get("/openapi.json").json()["paths"]
        assert {"/health", "/nodes", "/nodes/{node_id}", "/stores", "/regions"} <= set(paths)


def test_health_is_503_when_the_database_is_unreachable() -> None:
    settings = Settings(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings, run_worker=False)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["database"].startswith("unreachable")


def test_in_process_worker_feeds_the_api(broker: Broker, engine: Engine) -> None:
    settings: Settings = asyncio.run(cloud_settings(broker, engine))
    auth = {"Authorization": f"Bearer {create_api_key(engine, 'reader', 'hq')}"}

    async def birth() -> None:
        async with box(broker, "st0001-k1") as b:
            b.session = 7
            await b.birth()

    with TestClient(create_app(settings, run_worker=True, engine=engine), headers=auth) as client:
        poll(lambda: (client.get("/health").json()["worker"] or {}).get("connected") is True, what="worker connected")
        asyncio.run(birth())
        poll(lambda: client.get("/nodes/st0001-k1").status_code == 200, what="node registered")
        node = client.get("/nodes/st0001-k1").json()
        assert node["session"] == 7 and node["store"] is None and node["last_seen"]
        counters = client.get("/health").json()["worker"]["counters"]
        assert counters["stored"] == 1 and counters["births"] == 1


def test_api_docs_work_without_internet(engine: Engine) -> None:
    """/docs and /redoc reference only assets the app serves itself (no CDN)."""
    import re

    settings = Settings(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    with TestClient(create_app(settings, run_worker=False, engine=engine)) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(r"""url: ?["']([^"']+)""", html)
            assert assets, f"{page} references no assets"
            for url in assets:
                assert not url.startswith(("http:", "https:", "//")), f"{page} loads {url} from outside"
                assert client.get(url).status_code == 200, f"{page}: {url} is not served"
        assert "/nodes" in client.get("/openapi.json").json()["paths"]


def test_a_query_parameter_that_takes_one_value_refuses_several(engine: Engine) -> None:
    seed(engine)
    auth = {"Authorization": f"Bearer {create_api_key(engine, 'reader', 'hq')}"}
    settings = Settings(DATABASE_URL=engine.url.render_as_string(hide_password=False))
    with TestClient(create_app(settings, run_worker=False, engine=engine), headers=auth) as client:
        twice = client.get("/audit?actor=a&actor=b")
        assert twice.status_code == 422
        assert twice.json()["detail"] == [
            {"loc": ["query", "actor"], "msg": "given 2 times; this parameter takes one value", "type": "value_error"}]
        assert client.get("/audit?actor=a&limit=3").status_code == 200
        # A list parameter takes every value it is given, next to a single one that is refused.
        assert client.get("/signage/reports/plays?by=campaign&by=region").status_code == 200
        mixed = client.get("/signage/reports/plays?by=campaign&by=region&campaign=a&campaign=b")
        assert mixed.status_code == 422 and [d["loc"] for d in mixed.json()["detail"]] == [["query", "campaign"]]
