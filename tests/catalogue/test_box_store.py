"""The box's catalogue: atomic apply, search (Chinese and English, prefix and substring), epochs, and
resuming from the last accepted announcement."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from broker.payloads import CatalogData, CatalogFile
from broker.syncfile import ProductRecord, PutLine, SyncHeader, encode_header, encode_line
from edge.catalogue.store import CatalogueStore, CorruptSyncFile
from edge.catalogue.sync import CatalogueSync
from tests.catalogue.gen import gtin_for


def prod(sku: str, en: str, zh: str, *, gtin: str | None = None, price: str = "10.00", **kw: Any) -> dict[str, Any]:
    return {"sku": sku, "gtins": [gtin.zfill(14)] if gtin else [], "name_en": en, "name_zh": zh, "desc_en": None,
            "desc_zh": None, "brand": kw.get("brand"), "category": kw.get("category"), "attributes": {},
            "list_price": price, "prices": kw.get("prices", {}), "images": [], "serialised": False}


def lines(kind: str, frm: int, to: int, ops: list[dict[str, Any]]) -> list[str]:
    return [json.dumps({"format": 1, "kind": kind, "from": frm, "to": to})] + [json.dumps(o, ensure_ascii=False) for o in ops]


CATALOGUE = [
    prod("TEA-LJ-250", "Longjing green tea 250 g", "西湖龙井茶 250克", gtin="06901234567892", category="Food > Tea",
         prices={"east": "150.00"}, price="168.00"),
    prod("TEA-BL-100", "Black tea 100 g", "祁门红茶 100克", category="Food > Tea"),
    prod("RICE-WC-5KG", "Wuchang rice 5 kg", "五常大米 5公斤", category="Food > Rice"),
    prod("TEAPOT-1", "Teapot, clay", "紫砂茶壶", category="Home"),
    prod("GREEN-1", "Greenhouse tomatoes", "温室番茄", category="Food > Veg"),
    prod("CUP-TEA", "Cup", "杯子", gtin=gtin_for(42)),
]


@pytest.fixture
def store(tmp_path: Path) -> CatalogueStore:
    s = CatalogueStore(tmp_path / "cat")
    s.apply(lines("snapshot", 0, 1, [{"op": "put", "p": p} for p in CATALOGUE]), expect_from=0, expect_to=1, region="east")
    return s


def skus(results: list[dict[str, Any]]) -> list[str]:
    return [r["sku"] for r in results]


def test_snapshot_applies_with_the_region_price(store: CatalogueStore) -> None:
    assert store.version == 1 and store.count() == len(CATALOGUE)
    tea = store.product("TEA-LJ-250")
    assert tea is not None and tea["price"] == "150.00"  # the east override, not the list price
    assert store.product("TEA-BL-100")["price"] == "10.00"  # type: ignore[index]
    assert {c["path"]: c["products"] for c in store.categories()}["Food > Tea"] == 2


@pytest.mark.parametrize(
    ("query", "expected_first", "must_contain"),
    [
        ("茶", None, {"TEA-LJ-250", "TEA-BL-100", "TEAPOT-1"}),  # 1 CJK char: gram index
        ("红茶", "TEA-BL-100", {"TEA-BL-100"}),  # 2 CJK chars, in the middle of the name
        ("龙井茶", "TEA-LJ-250", {"TEA-LJ-250"}),  # 3+ chars: trigram substring
        ("西湖", "TEA-LJ-250", {"TEA-LJ-250"}),  # Chinese prefix
        ("green", "GREEN-1", {"GREEN-1", "TEA-LJ-250"}),  # prefix (Greenhouse) before substring (… green tea)
        ("GREEN TEA", "TEA-LJ-250", {"TEA-LJ-250"}),  # case-insensitive substring
        ("te", None, {"TEA-BL-100", "TEA-LJ-250", "TEAPOT-1"}),  # short latin: SKU/name prefix
        ("tea", "TEAPOT-1", {"TEAPOT-1", "TEA-LJ-250", "TEA-BL-100", "CUP-TEA"}),
    ],
)
def test_search(store: CatalogueStore, query: str, expected_first: str | None, must_contain: set[str]) -> None:
    found = skus(store.search(query))
    assert must_contain <= set(found), found
    if expected_first is not None:
        assert found[0] == expected_first, found


def test_exact_sku_and_gtin_rank_first(store: CatalogueStore) -> None:
    # 'CUP-TEA' also matches 'tea' by substring elsewhere; the exact SKU wins regardless of case.
    assert skus(store.search("cup-tea"))[0] == "CUP-TEA"
    assert skus(store.search("6901234567892"))[0] == "TEA-LJ-250"  # GTIN-13 finds the stored GTIN-14
    assert skus(store.search(gtin_for(42)))[0] == "CUP-TEA"
    assert store.search("nothing-like-this") == []


def test_delta_upserts_and_deletes(store: CatalogueStore) -> None:
    ops: list[dict[str, Any]] = [
        {"op": "put", "p": prod("TEA-BL-100", "Black tea 100 g", "滇红茶 100克", price="12.00")},
        {"op": "del", "sku": "RICE-WC-5KG"},
        {"op": "put", "p": prod("NEW-1", "Oolong", "乌龙茶")},
    ]
    store.apply(lines("delta", 1, 2, ops), expect_from=1, expect_to=2, region="east")
    assert store.version == 2
    assert store.product("RICE-WC-5KG") is None and store.search("大米") == []
    assert skus(store.search("滇红")) == ["TEA-BL-100"] and store.search("祁门") == []  # FTS follows the update
    assert "NEW-1" in skus(store.search("乌龙"))


def test_corrupt_delta_leaves_the_previous_version_whole(store: CatalogueStore) -> None:
    ops = [json.dumps({"op": "del", "sku": "TEA-LJ-250"}), "{not json"]
    with pytest.raises(CorruptSyncFile, match="line 3"):
        store.apply([lines("delta", 1, 2, [])[0], *ops], expect_from=1, expect_to=2, region="east")
    assert store.version == 1 and store.product("TEA-LJ-250") is not None
    assert skus(store.search("龙井"))[0] == "TEA-LJ-250"


def test_delta_for_another_version_is_refused(store: CatalogueStore) -> None:
    with pytest.raises(CorruptSyncFile, match="does not apply to local version 1"):
        store.apply(lines("delta", 5, 6, []), expect_from=5, expect_to=6, region="east")
    with pytest.raises(CorruptSyncFile, match="expected 1->3"):
        store.apply(lines("delta", 1, 2, []), expect_from=1, expect_to=3, region="east")
    assert store.version == 1


def test_gzip_round_trip_from_cloud_format(tmp_path: Path) -> None:
    # The cloud writes gzip'd JSON lines; the box reads them as text lines.
    data = gzip.compress("\n".join(lines("snapshot", 0, 3, [{"op": "put", "p": CATALOGUE[0]}])).encode())
    s = CatalogueStore(tmp_path / "c2")
    s.apply(io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(data)), encoding="utf-8"), expect_from=0, expect_to=3, region=None)
    assert s.version == 3 and s.product("TEA-LJ-250")["price"] == "168.00"  # type: ignore[index]


# -- epochs and the remembered announcement -----------------------------------------------------------

EPOCH_A, EPOCH_B = "a" * 32, "b" * 32


def sync_file(kind: str, frm: int, to: int, epoch: str | None, products: list[dict[str, Any]]) -> bytes:
    head = encode_header(SyncHeader(kind=kind, from_version=frm, to_version=to, epoch=epoch))
    body = [encode_line(PutLine(p=ProductRecord.model_validate(p))) for p in products]
    return gzip.compress(("\n".join([head, *body]) + "\n").encode(), mtime=0)


def ref(data: bytes, frm: int = 0) -> CatalogFile:
    sha = hashlib.sha256(data).hexdigest()
    return CatalogFile(path=f"/catalogue/files/{sha}", sha256=sha, size=len(data), from_version=frm)


def test_the_epoch_is_stored_with_the_version_and_a_file_of_another_is_refused(tmp_path: Path) -> None:
    s = CatalogueStore(tmp_path / "c")
    header = json.dumps({"format": 1, "kind": "snapshot", "from": 0, "to": 4, "epoch": EPOCH_A})
    s.apply([header, json.dumps({"op": "put", "p": CATALOGUE[0]})], expect_from=0, expect_to=4, region=None, epoch=EPOCH_A)
    assert (s.version, s.epoch) == (4, EPOCH_A)
    with pytest.raises(CorruptSyncFile, match=f"sync file is of catalogue epoch {EPOCH_A}, expected {EPOCH_B}"):
        s.apply([header], expect_from=0, expect_to=4, region=None, epoch=EPOCH_B)


def test_a_snapshot_with_a_sku_twice_or_a_deletion_is_refused(store: CatalogueStore) -> None:
    put = {"op": "put", "p": CATALOGUE[0]}
    with pytest.raises(CorruptSyncFile, match="line 3 puts SKU 'TEA-LJ-250' a second time"):
        store.apply(lines("snapshot", 0, 2, [put, put]), expect_from=0, expect_to=2, region=None)
    with pytest.raises(CorruptSyncFile, match="line 2 deletes 'X': a snapshot only puts products"):
        store.apply(lines("snapshot", 0, 2, [{"op": "del", "sku": "X"}]), expect_from=0, expect_to=2, region=None)
    assert store.version == 1 and store.count() == len(CATALOGUE)


SNAP = CatalogFile(path="/s", sha256="0" * 64, size=1)
DELTA_FROM_5 = CatalogFile(path="/d", sha256="1" * 64, size=1, from_version=5)
CHOICES = [
    # (box version, box epoch, announcement version, announcement epoch, expected)
    pytest.param(5, EPOCH_A, 5, EPOCH_A, None, id="up-to-date"),
    pytest.param(5, EPOCH_A, 6, EPOCH_A, DELTA_FROM_5, id="delta"),
    pytest.param(4, EPOCH_A, 6, EPOCH_A, SNAP, id="too-far-behind"),
    pytest.param(5, EPOCH_A, 6, EPOCH_B, SNAP, id="new-epoch-ignores-the-delta"),
    pytest.param(5, EPOCH_A, 2, EPOCH_B, SNAP, id="new-epoch-with-a-lower-version"),
    pytest.param(5, EPOCH_A, 5, EPOCH_B, SNAP, id="new-epoch-same-version"),
    pytest.param(0, None, 1, EPOCH_A, SNAP, id="empty-box"),
]


@pytest.mark.parametrize(("version", "epoch", "ann_version", "ann_epoch", "expected"), CHOICES)
def test_choose(tmp_path: Path, version: int, epoch: str | None, ann_version: int, ann_epoch: str, expected: CatalogFile | None) -> None:
    s = CatalogueStore(tmp_path / "c")
    if version:
        s.apply(lines("snapshot", 0, version, []), expect_from=0, expect_to=version, region="east", epoch=epoch)
    sync = CatalogueSync(s, "http://127.0.0.1:9")
    ann = CatalogData(version=ann_version, epoch=ann_epoch, region="east", snapshot=SNAP, deltas=(DELTA_FROM_5,))
    assert sync.choose(ann) == expected


def test_the_accepted_announcement_survives_a_restart_and_an_epoch_change_resyncs(tmp_path: Path) -> None:
    products = [dict(p, gtins=p["gtins"]) for p in CATALOGUE[:3]]
    files = {}
    a1 = sync_file("snapshot", 0, 7, EPOCH_A, products)
    b1 = sync_file("snapshot", 0, 2, EPOCH_B, products[:1])
    for data in (a1, b1):
        files[f"/catalogue/files/{hashlib.sha256(data).hexdigest()}"] = data

    class Files(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = files.get(self.path)
            self.send_response(200 if data else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    async def until(cond: Any) -> None:
        for _ in range(1000):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def main() -> None:
        store = CatalogueStore(tmp_path / "box")
        sync = CatalogueSync(store, url)
        first = CatalogData(version=7, epoch=EPOCH_A, snapshot=ref(a1))
        assert await sync.accept(first) == "catalogue version 7 accepted (box holds version 0)"
        assert await sync.accept(CatalogData(version=6, epoch=EPOCH_A, snapshot=ref(a1))) == (
            "catalogue version 6 ignored: version 7 was announced later")
        store.close()

        # Restarted before it could sync (and the bus will not run the same command again): it resumes.
        store = CatalogueStore(tmp_path / "box")
        sync = CatalogueSync(store, url)
        assert sync.latest == first
        task = asyncio.create_task(sync.run())
        await until(lambda: store.version == 7)
        assert (store.epoch, store.count()) == (EPOCH_A, 3)

        # A new cloud database: epoch B counts from 1 again, and its version 2 replaces our 7.
        newer = CatalogData(version=2, epoch=EPOCH_B, snapshot=ref(b1))
        assert await sync.accept(newer) == f"catalogue version 2 accepted (box holds version 7 of epoch {EPOCH_A})"
        await until(lambda: store.epoch == EPOCH_B)
        assert (store.version, store.count(), sync.stats.snapshots) == (2, 1, 2)
        await sync.stop()
        await task
        store.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        server.shutdown()
        server.server_close()
