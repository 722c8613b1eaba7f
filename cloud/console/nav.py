"""The console's navigation: built once per app from the engines' `NavItem`s, plus placeholders
for the engines that have not landed yet (replaced as soon as an engine brings its own entry)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloud.access.scope import Perm, Principal
from cloud.engine import EngineSpec, NavItem

__all__ = ["PLACEHOLDERS", "Placeholder", "build", "visible"]


@dataclass(frozen=True, slots=True)
class Placeholder:
    item: NavItem
    text: str
    """What the page will show once its engine exists."""


PLACEHOLDERS: tuple[Placeholder, ...] = (
    Placeholder(NavItem("orders", "Orders", "/console/orders", Perm.BUSINESS, 20),
                "Orders from every channel, routed to stores. The order-routing engine fills this page."),
    Placeholder(NavItem("stock", "Stock", "/console/stock", Perm.BUSINESS, 30),
                "Stock per store and product. The stock engine fills this page."),
    Placeholder(NavItem("traceability", "Traceability", "/console/traceability", Perm.BUSINESS, 40),
                "Code traceability (GS1 scans, batches, recalls). The traceability engine fills this page."),
    Placeholder(NavItem("signage", "Signage", "/console/signage", Perm.BUSINESS, 50),
                "Signage schedules for store screens. The signage engine fills this page."),
)


def build(engines: Sequence[EngineSpec]) -> tuple[tuple[NavItem, ...], tuple[Placeholder, ...]]:
    """(the menu in order, the placeholders still needed)."""
    items = [item for spec in engines for item in spec.nav]
    keys = [i.key for i in items]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise RuntimeError(f"two engines declare the console page {', '.join(clash)}")
    missing = tuple(p for p in PLACEHOLDERS if p.item.key not in keys)
    menu = sorted([*items, *(p.item for p in missing)], key=lambda i: (i.order, i.key))
    return tuple(menu), missing


def visible(menu: Sequence[NavItem], principal: Principal) -> list[NavItem]:
    return [e for e in menu if principal.can(e.perm)]
