"""Orders fixtures: a migrated database (SQLite, and PostgreSQL when reachable) with products,
stores, their boxes and locations."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Engine, event, insert, select

from cloud.catalogue.models import products
from cloud.db import write_transaction
from cloud.models import Node, Region, Store
from cloud.orders import service
from cloud.orders.stock import LevelIn, apply_levels
from tests.cloud.conftest import db_url, engine  # noqa: F401 (fixtures)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

# Shanghai-ish stores: A is the kiosk's store, B 2 km away, C 30 km away.
STORES = {
    "sta": (31.2304, 121.4737, "sta-k1"),
    "stb": (31.2400, 121.4900, "stb-k1"),
    "stc": (31.0000, 121.2000, "stc-k1"),
}
SKUS = ("TEA-1", "RICE-1", "SOY-1")


def seed(eng: Engine, skus: Iterable[str] = SKUS, stores: dict[str, tuple[float, float, str]] | None = None) -> None:
    stores = STORES if stores is None else stores
    with write_transaction(eng) as conn:
        have = set(conn.execute(select(products.c.sku)).scalars())
        rows = [{"sku": s, "name_en": s, "name_zh": s, "list_price": Decimal("10.00")} for s in skus if s not in have]
        if rows:
            conn.execute(insert(products), rows)
        region = conn.execute(select(Region.id).where(Region.code == "east")).scalar()
        if region is None:
            region = conn.execute(insert(Region).values(code="east", name="East").returning(Region.id)).scalar_one()
        for code, (lat, lon, node) in stores.items():
            sid = conn.execute(insert(Store).values(code=code, name=code.upper(), region_id=region, lat=lat, lon=lon,
                                                    timezone="Asia/Shanghai").returning(Store.id)).scalar_one()
            conn.execute(insert(Node).values(id=node, store_id=sid, online=False))
            service.store_location(conn, node)


def stock(eng: Engine, code: str, levels: dict[str, int], safety: int | None = None) -> None:
    with write_transaction(eng) as conn:
        loc = service.location_id(conn, code)
        apply_levels(conn, loc, [LevelIn(s, n, safety) for s, n in levels.items()], source="test", now=NOW)


def order(channel_order_id: str, lines: Sequence[tuple[str, int]], *, lat: float | None = 31.2410,
          lon: float | None = 121.4910, fulfilment: str = "delivery", channel: str = "web", **kw: object
          ) -> service.OrderInput:
    return service.OrderInput.model_validate({
        "channel": channel, "channel_order_id": channel_order_id, "fulfilment": fulfilment,
        "lines": [{"sku": s, "qty": q, "price": 10} for s, q in lines], "lat": lat, "lon": lon, **kw,
    })


@contextmanager
def counted(eng: Engine) -> Iterator[list[str]]:
    """The SQL statements `eng` sends while the block runs, whitespace folded."""
    seen: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(eng, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(eng, "before_cursor_execute", count)
