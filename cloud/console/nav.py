"""The console's navigation: built once per app from the engines' `NavItem`s."""

from __future__ import annotations

from collections.abc import Sequence

from cloud.access.scope import Principal
from cloud.engine import EngineSpec, NavItem

__all__ = ["build", "visible"]


def build(engines: Sequence[EngineSpec]) -> tuple[NavItem, ...]:
    """The menu, in order."""
    items = [item for spec in engines for item in spec.nav]
    keys = [i.key for i in items]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise RuntimeError(f"two engines declare the console page {', '.join(clash)}")
    return tuple(sorted(items, key=lambda i: (i.order, i.key)))


def visible(menu: Sequence[NavItem], principal: Principal) -> list[NavItem]:
    return [e for e in menu if principal.can(e.perm)]
