"""Demo data: two regions, three stores in China, one box per store, a few products.

Idempotent: rows are matched by their natural key (code, node id, sku) and only missing ones are
added, so `omnishelf cloud seed` can run at every demo start. The demo orchestrator builds its box
configs from `DEMO_STORES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from cloud.catalogue.models import Product, product_gtins
from cloud.models import Node, Region, Store

__all__ = ["DEMO_PRODUCTS", "DEMO_REGIONS", "DEMO_STORES", "DEMO_STORE_DETAILS", "DemoStore", "SeedResult", "seed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoStore:
    code: str
    name: str
    region: str
    lat: float
    lon: float
    node: str
    timezone: str = "Asia/Shanghai"


DEMO_REGIONS: dict[str, str] = {"east": "East China", "south": "South China"}

_STORES = (
    DemoStore("st0001", "Shanghai Nanjing Road", "east", 31.2350, 121.4740, "st0001-k1"),
    DemoStore("st0002", "Hangzhou West Lake", "east", 30.2590, 120.1630, "st0002-k1"),
    DemoStore("st0003", "Shenzhen Futian", "south", 22.5410, 114.0580, "st0003-k1"),
)
DEMO_STORES: dict[str, str] = {s.code: s.node for s in _STORES}
"""Store code → node id of the store's demo box (what the demo orchestrator configures)."""
DEMO_STORE_DETAILS: dict[str, DemoStore] = {s.code: s for s in _STORES}
"""Store code → the whole demo store (name, region, coordinates, time zone, node id)."""

# (sku, gtin, English name, Chinese name, list price in CNY)
DEMO_PRODUCTS: tuple[tuple[str, str, str, str, Decimal], ...] = (
    ("TEA-LJ-250", "06901234567892", "Longjing green tea 250 g", "西湖龙井茶 250克", Decimal("168.00")),
    ("RICE-WC-5KG", "06923456789012", "Wuchang rice 5 kg", "五常大米 5公斤", Decimal("89.90")),
    ("SOY-LS-500", "06934567890122", "Light soy sauce 500 ml", "生抽酱油 500毫升", Decimal("12.50")),
    ("MOON-LT-4", "06945678901232", "Lotus seed mooncakes, box of 4", "莲蓉月饼 4只装", Decimal("128.00")),
    ("NOOD-LZ-1", "06956789012342", "Lanzhou beef noodles", "兰州牛肉面", Decimal("18.00")),
)
"""GTINs as 14 digits with valid check digits (tests/catalogue/test_seed.py checks them with gs1)."""


@dataclass(frozen=True, slots=True)
class SeedResult:
    regions: int
    stores: int
    nodes: int
    products: int

    @property
    def total(self) -> int:
        return self.regions + self.stores + self.nodes + self.products


def seed(engine: Engine) -> SeedResult:
    """Add whatever demo rows are missing; return how many of each were added."""
    # Declared a writer so SQLite takes its write lock up front (see cloud.db).
    with Session(engine.execution_options(omnishelf_write=True)) as session, session.begin():
        regions = {r.code: r for r in session.scalars(select(Region))}
        added_regions = 0
        for code, name in DEMO_REGIONS.items():
            if code not in regions:
                regions[code] = Region(code=code, name=name)
                session.add(regions[code])
                added_regions += 1

        stores = {s.code: s for s in session.scalars(select(Store))}
        added_stores = 0
        for demo in _STORES:
            if demo.code not in stores:
                stores[demo.code] = Store(
                    code=demo.code,
                    name=demo.name,
                    region=regions[demo.region],
                    lat=demo.lat,
                    lon=demo.lon,
                    timezone=demo.timezone,
                )
                session.add(stores[demo.code])
                added_stores += 1

        added_nodes = 0
        for demo in _STORES:
            node = session.get(Node, demo.node)
            if node is None:
                session.add(Node(id=demo.node, store=stores[demo.code]))
                added_nodes += 1
            elif node.store_id is None:
                # The box may have been seen (and auto-created) before the seed ran.
                node.store = stores[demo.code]

        skus = set(session.scalars(select(Product.sku)))
        # A GTIN belongs to one product: one an import gave to another SKU stays there.
        taken = set(session.scalars(select(product_gtins.c.gtin).where(product_gtins.c.gtin.in_([p[1] for p in DEMO_PRODUCTS]))))
        added: list[Product] = []
        for sku, gtin, name_en, name_zh, price in DEMO_PRODUCTS:
            if sku not in skus:
                gtins = [gtin] if gtin not in taken else []
                added.append(Product(sku=sku, gtin=gtins[0] if gtins else None, gtins=gtins, name_en=name_en,
                                     name_zh=name_zh, list_price=price))
        session.add_all(added)
        added_products = len(added)
        if added:
            from cloud.catalogue.importer import stamp_unversioned

            session.flush()
            # The GTIN index is what the catalogue's search and GTIN ownership check read.
            gtin_rows = [{"gtin": p.gtin, "product_id": p.id} for p in added if p.gtin]
            if gtin_rows:
                session.execute(insert(product_gtins), gtin_rows)
            stamp_unversioned(session.connection(), "seed")

    result = SeedResult(added_regions, added_stores, added_nodes, added_products)
    log.info(
        "seed: added %d regions, %d stores, %d nodes, %d products",
        result.regions, result.stores, result.nodes, result.products,
    )
    return result
