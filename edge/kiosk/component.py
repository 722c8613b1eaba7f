"""The cloud shelf's box side: what the kiosk UI needs beyond the catalogue's own routes.

Local API (the kiosk calls it; product details and images stay on the catalogue's routes):

    GET  /shelf/products?q=&category=&brand=&min_price=&max_price=&in_stock=&limit=&offset=
         {"total", "offset", "items": [...]}: pinyin (full or initials), characters, English, SKU
    GET  /shelf/brands
    GET  /shelf/categories
    GET  /shelf/availability/{sku}
         {"here": {...}, "stores": [...], "warehouse": {...}, "source": "cloud"|"cache"|"none", "age_s"}
    POST /shelf/orders   a basket → one `order` message through the outbox → {"order_id", "confirm_url"};
                         a pickup order also prints the shopper's pickup slip when the box has a printer
    GET  /shelf/info     this store's code, the pickup stores, the warehouse's delivery days

An order is committed to the outbox before the answer: a shopper who saw an order number has an
order that reaches the cloud, whenever the link comes back.

The local API is announced by zeroconf (`_omnishelf-box._tcp`, see `edge.kiosk.discovery`) so that
`omnishelf kiosk` finds its box when it was given no URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from broker.envelope import MessageType
from broker.payloads import Fulfilment, OrderData, OrderLine
from edge.component import BackgroundTask, Component, ComponentContext, ComponentError, Shared
from edge.kiosk.discovery import announce
from edge.kiosk.shelf_db import Figure, FigureRow, Filters, ShelfDb
from edge.kiosk.slip import render_pickup_slip
from edge.localapi import ApiError, Request, Route, integer, text
from edge.outbox import Row

__all__ = ["KioskComponent", "KioskOrderBody"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
INDEX_CHECK_S = 2.0
_SKU = re.compile(r"[A-Za-z0-9._\-/]{1,64}")
_PHONE = re.compile(r"\+?[0-9][0-9 \-]{5,19}")
_B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BasketLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-/]{1,64}$")]
    qty: Annotated[int, Field(gt=0, le=99)]


class KioskOrderBody(BaseModel):
    """A basket from the kiosk; the box fills in prices and the order number."""

    model_config = ConfigDict(extra="forbid")
    lines: Annotated[list[BasketLine], Field(min_length=1, max_length=50)]
    fulfilment: Literal["pickup", "delivery"]
    pickup_store: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=30)] | None = None
    address: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180)] | None = None

    def problems(self) -> list[str]:
        """What is wrong with the shopper's details, one line each (the kiosk checks the same inline)."""
        out = []
        if self.fulfilment == "delivery":
            missing = [f for f in ("name", "phone", "address") if not getattr(self, f)]
            if missing:
                out.append(f"a delivery needs {' and '.join(missing)}")
            if self.address and len(self.address) < 6:
                out.append(f"address {self.address!r} is too short: expected street, number and city")
        if self.phone and not _PHONE.fullmatch(self.phone):
            out.append(f"phone {self.phone!r} is not a phone number: expected 6-20 digits, spaces or '-'")
        return out


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


class KioskComponent(Component):
    name = "kiosk"

    def __init__(self, ctx: ComponentContext) -> None:
        cfg = ctx.config.kiosk
        self.cfg = cfg
        self.store_code = ctx.config.store_id
        self.node = ctx.config.node_id
        path = ctx.paths.kiosk
        try:
            self.db = ShelfDb(path)
        except (OSError, sqlite3.Error) as exc:
            raise ComponentError(f"kiosk.path {path}: cannot open the shelf index ({exc})") from None
        self.catalogue_db = Path(ctx.paths.catalogue) / "catalogue.db"
        self._publish = ctx.publish
        self._reachable = ctx.cloud_reachable
        self._shared: Shared = ctx.shared
        self._api_url = ctx.local_api_url
        self.slips = 0
        self.announced: str | None = None
        """The zeroconf instance name the local API is announced under (None: not announced)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self.placed = 0
        self.last_error: str | None = None
        self.rebuilds = 0
        self._order_seq_ms = 0
        ctx.shared.stock = self  # the clerk's station looks stock up through the same figures

    # -- the catalogue index -----------------------------------------------------------------------

    def _catalogue_identity(self) -> str | None:
        if not self.catalogue_db.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{self.catalogue_db}?mode=ro", uri=True, timeout=10)
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('version', 'epoch')").fetchall())
            finally:
                conn.close()
        except sqlite3.Error:
            return None  # not created yet by the catalogue component
        if not meta.get("version"):
            return None
        return f"{meta.get('epoch') or ''}:{meta['version']}"

    def refresh_index(self) -> bool:
        """Rebuild the index if the catalogue moved on; True if it did (worker thread)."""
        identity = self._catalogue_identity()
        if identity is None or identity == self.db.indexed:
            return False
        started = time.monotonic()
        n = self.db.rebuild(self.catalogue_db, identity)
        self.rebuilds += 1
        log.info("kiosk: search index rebuilt for catalogue %s (%d products, %.1f s)", identity, n,
                 time.monotonic() - started)
        return True

    # -- stock figures -----------------------------------------------------------------------------

    def _fetch_stock(self, query: Mapping[str, str | int]) -> list[FigureRow]:
        assert self.cfg.stock_url is not None
        url = f"{self.cfg.stock_url}/stock?{urllib.parse.urlencode(query)}"
        headers = {"Accept": "application/json"}
        if self.cfg.stock_api_key:
            headers["Authorization"] = f"Bearer {self.cfg.stock_api_key}"
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.cfg.stock_timeout_s) as r:
            body = json.loads(r.read())
        if not isinstance(body, list):
            raise ValueError(f"{url} answered {type(body).__name__}: expected a list of stock rows")
        out: list[FigureRow] = []
        for row in body:
            if isinstance(row, dict) and isinstance(row.get("sku"), str) and isinstance(row.get("location"), str):
                atp = row.get("atp", row.get("on_hand", 0))
                on_hand = row.get("on_hand")
                out.append((row["sku"], row["location"], row.get("kind"), int(atp) if isinstance(atp, int) else 0,
                            on_hand if isinstance(on_hand, int) and not isinstance(on_hand, bool) else None))
        return out

    def refresh_store_stock(self) -> bool:
        """This store's figures for the 'in stock here' filter (worker thread); True if fetched."""
        if self.cfg.stock_url is None or not self._reachable():
            return False
        try:
            rows = self._fetch_stock({"location": self.store_code, "limit": 5000})
        except (OSError, ValueError) as exc:
            self.last_error = f"stock of {self.store_code}: {exc}"
            log.warning("kiosk: could not fetch this store's stock (%s)", exc)
            return False
        self.db.put_figures(rows, replace_location=self.store_code)
        return True

    def _lookup(self, sku: str, refresh: bool = True) -> tuple[list[Figure], float | None, str]:
        """The figures of one product, refreshed from the cloud when it answers in time."""
        source = "cache"
        if refresh and self.cfg.stock_url is not None and self._reachable():
            try:
                self.db.put_figures(self._fetch_stock({"sku": sku, "limit": 500}), replace_sku=sku)
                source = "cloud"
            except (OSError, ValueError) as exc:
                self.last_error = f"stock of {sku}: {exc}"
        figures, fetched = self.db.figures(sku)
        return figures, fetched, source

    def availability(self, sku: str) -> dict[str, Any]:
        figures, fetched, source = self._lookup(sku)
        if fetched is None:
            source = "none"
        by_loc = {f.location: f for f in figures}
        here = by_loc.get(self.store_code)
        stores: list[dict[str, Any]] = []
        for s in sorted(self.cfg.nearby, key=lambda s: s.km):
            f = by_loc.get(s.code)
            if f is not None and f.atp > 0:
                stores.append({"code": s.code, "name": s.name, "km": s.km, "qty": f.atp})
        wh = by_loc.get(self.cfg.warehouse)
        return {
            "sku": sku,
            "here": {"code": self.store_code, "qty": here.atp if here else 0},
            "stores": stores,
            "warehouse": {"code": self.cfg.warehouse, "qty": wh.atp if wh else 0, "days": self.cfg.warehouse_days},
            "source": source,
            "as_of": fetched,
            "age_s": None if fetched is None else max(0, round(time.time() - fetched)),
        }

    def station_stock(self, sku: str, *, refresh: bool = True) -> dict[str, Any]:
        """`edge.component.StockLookup`: the clerk's view of the same figures (on hand and available
        here, every nearby store with its available count, zero included: a clerk asks "who has it")."""
        figures, fetched, source = self._lookup(sku, refresh)
        by_loc = {f.location: f for f in figures}
        here = by_loc.get(self.store_code)
        nearby = [{"store": s.code, "name": s.name, "distance_km": s.km,
                   "available": by_loc[s.code].atp if s.code in by_loc else None}
                  for s in sorted(self.cfg.nearby, key=lambda s: s.km)]
        return {
            "sku": sku,
            "here": None if here is None else {"on_hand": here.on_hand, "available": here.atp},
            "nearby": nearby,
            "as_of": None if fetched is None else datetime.fromtimestamp(fetched, UTC).isoformat(timespec="seconds"),
            "source": source,
        }

    # -- orders --------------------------------------------------------------------------------------

    def _order_id(self) -> str:
        # Milliseconds since 2024 in base 36: short enough to read out, unique per box (one at a time).
        ms = max(int(time.time() * 1000) - 1_704_067_200_000, self._order_seq_ms + 1)
        self._order_seq_ms = ms
        return f"{self.node}-{_b36(ms)}"

    def place(self, body: KioskOrderBody) -> dict[str, Any]:
        if problems := body.problems():
            raise ApiError(HTTPStatus.BAD_REQUEST, "; ".join(problems))
        if self._loop is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the kiosk's order service is starting: try again in a moment")
        pickup = None
        if body.fulfilment == "pickup":
            allowed = {self.store_code, *(s.code for s in self.cfg.nearby)}
            pickup = body.pickup_store or self.store_code
            if pickup not in allowed:
                raise ApiError(HTTPStatus.BAD_REQUEST,
                               f"pickup_store {pickup[:40]!r} is not a pickup store: expected one of {', '.join(sorted(allowed))}")
        lines = []
        for line in body.lines:
            item = self.db.item(line.sku)
            if item is None:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"SKU {line.sku!r} is not in this box's catalogue: remove it from the basket")
            lines.append(OrderLine(sku=line.sku, qty=line.qty, price=item["price"]))
        order_id = self._order_id()
        payload = OrderData(
            order_id=order_id, channel="kiosk", lines=tuple(lines), fulfilment=Fulfilment(body.fulfilment),
            contact=" ".join(x for x in (body.name, body.phone) if x) or None,
            address=body.address if body.fulfilment == "delivery" else None,
            customer=body.name or None, lat=body.lat, lon=body.lon, pickup_store=pickup,
        )

        async def publish() -> Row:
            return await self._publish(MessageType.ORDER, payload)

        try:
            row = asyncio.run_coroutine_threadsafe(publish(), self._loop).result(PUBLISH_TIMEOUT_S)
        except Exception as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"could not queue the order: {exc}") from None
        self.db.place(order_id, payload.model_dump(mode="json"))
        self.placed += 1
        total = sum((ln.price or 0) * ln.qty for ln in lines)
        answer = {"order_id": order_id, "seq": int(row.seq), "total": round(float(total), 2),
                  "fulfilment": body.fulfilment, "pickup_store": pickup,
                  "confirm_url": self.cfg.confirm_url.replace("{order_id}", urllib.parse.quote(order_id))}
        if pickup is not None:
            named = [{"sku": ln.sku, "qty": ln.qty, "price": ln.price, "name_en": (self.db.item(ln.sku) or {}).get("name_en")}
                     for ln in lines]
            answer.update(self._print_slip(answer, named, pickup))
        return answer

    def _print_slip(self, answer: dict[str, Any], lines: list[dict[str, Any]], pickup: str) -> dict[str, Any]:
        """Queue the shopper's pickup slip; what the answer says about it. The order is in the
        outbox already, whatever happens here."""
        queue = self._shared.print_queue
        if queue is None:
            return {"print": None, "print_note": "no printer on this box: no pickup slip"}
        names = {s.code: s.name for s in self.cfg.nearby}
        try:
            job, new = queue.queue_document(
                "kiosk_pickup_slip",
                lambda profile: render_pickup_slip(answer, lines, store=self.store_code, pickup=pickup,
                                                   pickup_name=names.get(pickup), confirm_url=answer["confirm_url"],
                                                   profile=profile, when=datetime.now()),
                request_id=f"kiosk-{answer['order_id']}")
        except Exception as exc:  # a slip that cannot be queued is reported, never a lost order
            log.warning("kiosk: the pickup slip of %s was not queued: %s", answer["order_id"], exc)
            return {"print": None, "print_note": f"the pickup slip was not queued: {exc}"}
        self.slips += int(new)
        return {"print": {"job": job, "kind": "kiosk_pickup_slip", "new": new}}

    # -- local API -------------------------------------------------------------------------------------

    def routes(self) -> Sequence[Route]:
        def products(req: Request) -> Any:
            p = req.params

            def opt_text(name: str) -> str | None:
                v = p[name]
                assert isinstance(v, str | None)
                return v or None

            def opt_price(name: str) -> float | None:
                v = p[name]
                assert isinstance(v, int)
                return None if v < 0 else float(v)

            in_stock = opt_text("in_stock")
            if in_stock not in (None, "0", "1", "true", "false"):
                raise ApiError(HTTPStatus.BAD_REQUEST, f"in_stock {in_stock!r}: expected 1 or 0")
            f = Filters(query=opt_text("q") or "", category=opt_text("category"), brand=opt_text("brand"),
                        min_price=opt_price("min_price"), max_price=opt_price("max_price"),
                        in_stock_here=in_stock in ("1", "true"))
            if f.min_price is not None and f.max_price is not None and f.min_price > f.max_price:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"min_price {f.min_price:g} is above max_price {f.max_price:g}")
            offset = int(p["offset"] or 0)
            total, items = self.db.page(f, self.store_code, int(p["limit"] or 0), offset)
            return {"total": total, "offset": offset, "items": items}

        def availability(req: Request) -> Any:
            sku = req.args["sku"]
            if not _SKU.fullmatch(sku):
                raise ApiError(HTTPStatus.BAD_REQUEST,
                               f"{sku[:80]!r} is not a SKU: expected 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '/'")
            if self.db.item(sku) is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no product with SKU {sku!r} on this shelf")
            return self.availability(sku)

        def order(req: Request) -> Any:
            assert isinstance(req.body, KioskOrderBody)
            return self.place(req.body)

        def info(_req: Request) -> Any:
            return {"store": self.store_code, "node": self.node,
                    "pickup": [{"code": self.store_code, "name": None, "km": 0.0}]
                    + [{"code": s.code, "name": s.name, "km": s.km} for s in self.cfg.nearby],
                    "warehouse_days": self.cfg.warehouse_days, "products": self.db.count()}

        return (
            Route("GET", "/shelf/products", products, params=(
                text("q", max_len=100), text("category", max_len=500), text("brand", max_len=200),
                integer("min_price", -1, -1, 10**9), integer("max_price", -1, -1, 10**9), text("in_stock", max_len=5),
                integer("limit", 40, 1, 200), integer("offset", 0, 0, 10**9))),
            Route("GET", "/shelf/brands", lambda _r: self.db.brands()),
            Route("GET", "/shelf/categories", lambda _r: self.db.categories()),
            Route("GET", "/shelf/availability/{sku...}", availability),
            Route("POST", "/shelf/orders", order, body=KioskOrderBody),
            Route("GET", "/shelf/info", info),
        )

    # -- tasks -------------------------------------------------------------------------------------------

    def tasks(self) -> Sequence[BackgroundTask]:
        return (BackgroundTask("kiosk-index", self._index_loop), BackgroundTask("kiosk-stock", self._stock_loop),
                BackgroundTask("kiosk-announce", self._announce))

    async def _announce(self) -> None:
        url = self._api_url()
        if url is None:
            return  # no local API on this box: nothing a kiosk could find
        try:
            ad = await asyncio.to_thread(announce, url, self.node, self.store_code)
        except Exception as exc:  # the kiosk can still be given the URL: said, never fatal
            self.last_error = f"zeroconf announcement: {type(exc).__name__}: {exc}"
            log.warning("kiosk: could not announce the local API by zeroconf (%s); give kiosks its URL", exc)
            return
        self.announced = ad.name
        log.info("kiosk: local API %s announced by zeroconf as %s", url, ad.name)
        try:
            await self._stop.wait()
        finally:
            self.announced = None
            await asyncio.to_thread(ad.close)

    async def _wait(self, seconds: float) -> bool:
        """Sleep until `seconds` pass or the component stops; True if it stopped."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _index_loop(self) -> None:
        # Routes run on API worker threads: they hand publishing to this loop.
        self._loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.refresh_index)
            except Exception as exc:  # e.g. the pinyin process died: said, and tried again, never silent
                self.last_error = f"search index: {type(exc).__name__}: {exc}"
                log.warning("kiosk: search index rebuild failed (%s); again in %.0f s", exc, INDEX_CHECK_S)
            if await self._wait(INDEX_CHECK_S):
                return

    async def _stock_loop(self) -> None:
        while not self._stop.is_set():
            delay = self.cfg.refresh_s if await asyncio.to_thread(self.refresh_store_stock) else min(self.cfg.refresh_s, 10.0)
            if await self._wait(delay):
                return

    def status(self) -> Mapping[str, Any]:
        return {"indexed": self.db.indexed, "products": self.db.count(), "rebuilds": self.rebuilds,
                "placed": self.placed, "slips_queued": self.slips, "announced": self.announced,
                "last_error": self.last_error}

    async def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.db.close()
