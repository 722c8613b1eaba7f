"""The list of engines: the one place that says what the cloud core is made of.

The app factory, the cloud bus, Alembic and the command line all read it; an engine that is not
listed here does not exist, and adding one is adding a line here (and its folder).

Kept light to import: the `omnishelf` command reads `COMMANDS` for its help without loading any
engine; `load_engines()` imports the descriptors when something needs them.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.engine import EngineSpec

__all__ = ["COMMANDS", "ENGINE_MODULES", "load_engines"]

ENGINE_MODULES: tuple[str, ...] = (
    "cloud.access.engine",
    "cloud.fleet.engine",
    "cloud.catalogue.engine",
    "cloud.trace.engine",
    "cloud.signage.engine",
    "cloud.orders.engine",
    "cloud.staff.engine",
)
"""Each module holds `ENGINE: EngineSpec`. Order: handlers of one type run in this order."""

COMMANDS: dict[str, tuple[str, str]] = {
    "users": ("cloud.access.cli", "console users and API keys (create the first admin here)"),
    "fleet": ("cloud.fleet.cli", "operate the bus: failed messages and their replay, commands sent to boxes"),
    "catalogue": ("cloud.catalogue.cli", "product master data: bulk import (CSV/JSON), import history, catalogue version"),
    "trace": ("cloud.trace.cli", "traceability: capture EPCIS documents, commission units from CSV, verify a code"),
    "signage": ("cloud.signage.cli", "signage: media upload, publish and roll back, what a store's screens play, proof of play"),
    "orders": ("cloud.orders.cli", "orders and stock: warehouse stock import (CSV), the inbox, routing rules"),
}
"""`omnishelf <name>` → (module with `add_parser(subparsers)`, help line), for the engines' commands."""


EXTRA_ENV = "OMNISHELF_EXTRA_ENGINES"
"""Comma-separated modules holding an `ENGINE`, loaded after the built-in ones: a site's own engine,
or a test's, without editing this file."""


def load_engines() -> tuple[EngineSpec, ...]:
    return _load(os.environ.get(EXTRA_ENV, ""))


@functools.cache
def _load(extra: str) -> tuple[EngineSpec, ...]:
    modules = [*ENGINE_MODULES, *(m.strip() for m in extra.split(",") if m.strip())]
    engines: list[EngineSpec] = []
    for name in modules:
        try:
            engines.append(importlib.import_module(name).ENGINE)
        except (ImportError, AttributeError) as exc:
            raise RuntimeError(f"engine module {name!r} cannot be loaded ({exc}); check {EXTRA_ENV}") from None
    names = [e.name for e in engines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"two engines are named {', '.join(duplicates)}: engine names must be unique")
    return tuple(engines)
