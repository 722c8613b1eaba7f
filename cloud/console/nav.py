"""The console's navigation: one entry per page, shown to the roles that may open it.

An engine adds its page by including its own router (its handlers depend on
`cloud.console.pages.console_user(Perm.X)` and render with `cloud.console.pages.render`) and
replacing or adding its `NavEntry` here with `register`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.access.scope import Perm, Principal

__all__ = ["NAV", "NavEntry", "register", "visible"]


@dataclass(frozen=True, slots=True)
class NavEntry:
    key: str
    label: str
    path: str
    perm: Perm


NAV: list[NavEntry] = [
    NavEntry("fleet", "Fleet", "/console/fleet", Perm.FLEET),
    NavEntry("orders", "Orders", "/console/orders", Perm.BUSINESS),
    NavEntry("stock", "Stock", "/console/stock", Perm.BUSINESS),
    NavEntry("traceability", "Traceability", "/console/traceability", Perm.BUSINESS),
    NavEntry("signage", "Signage", "/console/signage", Perm.BUSINESS),
    NavEntry("devices", "Devices", "/console/devices", Perm.FLEET),
    NavEntry("users", "Users", "/console/users", Perm.USERS),
    NavEntry("api-keys", "API keys", "/console/api-keys", Perm.USERS),
    NavEntry("audit", "Audit", "/console/audit", Perm.AUDIT),
]

PLACEHOLDERS: dict[str, str] = {
    "orders": "Orders from every channel, routed to stores. The order-routing engine fills this page.",
    "stock": "Stock per store and product. The stock engine fills this page.",
    "traceability": "Code traceability (GS1 scans, batches, recalls). The traceability engine fills this page.",
    "signage": "Signage schedules for store screens. The signage engine fills this page.",
}
"""Pages whose engine has not landed yet: key → what will be there."""


def register(entry: NavEntry) -> None:
    """Add `entry`, or replace the entry with the same key (keeping its place in the menu)."""
    for i, e in enumerate(NAV):
        if e.key == entry.key:
            NAV[i] = entry
            PLACEHOLDERS.pop(entry.key, None)
            return
    NAV.append(entry)


def visible(principal: Principal) -> list[NavEntry]:
    return [e for e in NAV if principal.can(e.perm)]
